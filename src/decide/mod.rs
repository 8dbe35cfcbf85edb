//! Decide: pure rules over observed facts, with no I/O and no clock of their
//! own (time is passed in). Hysteresis, guards and the loop's state.

pub mod detector;
pub mod guards;
pub mod state;
