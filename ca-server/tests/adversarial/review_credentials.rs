//! Review findings 6, 8 and 9: the JWKS cache lifetime, tokens with ids and expiry, and
//! one rule for secret files.

#[allow(unused_imports)]
use super::*;
