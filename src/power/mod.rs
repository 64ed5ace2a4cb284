//! Power-aware thread scheduling: temperature, throttling, big.LITTLE cores and the power
//! supply decide how many compute threads run, and on which cores.
//!
//! - reading the machine: [`sysfs`] (forgiving reads under an injectable root), [`cpus`],
//!   [`thermal`], [`throttle`] (Raspberry Pi firmware flags), [`supply`] (batteries, hwmon
//!   sensors), gathered by [`machine::Machine`];
//! - deciding: [`policy`] (the policies and the governor with its thermal hysteresis), fed by
//!   [`speed`] curves that [`calibrate`] measures on the loaded model;
//! - applying: [`daemon`] (the governor thread of `bitnetd serve` and its status), through
//!   the compute pool's plan (`compute::Pool::enter`, between tokens) and, when writable,
//!   the fast cores' clock ceiling ([`clock`]);
//! - judging: [`energy`] (joules per token) and [`simulate`] (a passively cooled Pi 5).
//!
//! Nothing here fails: what sysfs does not show degrades to a fixed thread count.

pub mod calibrate;
pub mod clock;
pub mod cpus;
pub mod daemon;
pub mod energy;
pub mod machine;
pub mod policy;
pub mod simulate;
pub mod speed;
pub mod supply;
pub mod sysfs;
pub mod thermal;
pub mod throttle;

pub use machine::Machine;
pub use policy::{Decision, Governor, Policy, Settings};
pub use sysfs::SysRoot;
