//! Act: the writes this program makes once a decision says so — promoting
//! the DR cluster by editing its dynamic config.

pub mod dynamic_config;
pub mod fence;
pub mod promoter;
