//! Review findings 5 and 11: the audit trail checked against what lies outside the
//! database, and bounded audit reads.

#[allow(unused_imports)]
use super::*;
