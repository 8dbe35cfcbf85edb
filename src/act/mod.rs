//! Act: the writes this program makes once a decision says so — promoting
//! the DR cluster by editing its dynamic config, and keeping its
//! `standby_cluster` on the Transport Service.

pub mod dynamic_config;
pub mod fence;
pub mod promoter;
pub mod standby_target;
