//! Review findings 3, 4, 7 and 10: standing re-checked where certificates are signed,
//! bounded caller strings, invisible characters, and a panicking writer.

#[allow(unused_imports)]
use super::*;
