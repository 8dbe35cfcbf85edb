//! Decide: pure rules over observed facts, with no I/O and no clock of their
//! own (time is passed in). Hysteresis, guards, the quorum and the loops'
//! states.

pub mod detector;
pub mod fence;
pub mod guard;
pub mod guards;
pub mod quorum;
pub mod rejoin;
pub mod standby_target;
pub mod state;
pub mod witness;
