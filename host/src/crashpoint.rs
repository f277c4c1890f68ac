//! Crash points (`FERRY_CRASH_AT`): see [`ferry_triggers::crashpoint`], where they live so that
//! triggers can have them too.

pub use ferry_triggers::crashpoint::crashpoint;
