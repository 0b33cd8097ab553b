//! The `gateway` binary as operators and developers run it: its commands, `gateway serve` on
//! embedded defaults and against the emulator, the admin commands against MariaDB and moto,
//! and the fault-injection runs. One test binary: each suite is a module.

mod admin;
mod cli;
mod fault_injection;
mod serve;
