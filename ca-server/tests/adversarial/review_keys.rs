//! Review findings 1 and 2: subject keys OpenSSH would refuse, the KRL flood, entries that
//! cannot be listed.

#[allow(unused_imports)]
use super::*;
