//! Simulators shipped with obdgw (first-class: demo, tests, development without hardware).

pub mod cloud;
