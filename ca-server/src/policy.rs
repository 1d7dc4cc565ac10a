//! Roles and who may do what: the policy file, validated as a whole, and pure decisions.
//!
//! Parsing goes raw (serde, unknown keys refused) -> validated [`Policy`] in one function
//! that reports every error at once. Decisions take a [`Caller`] and return values; nothing
//! here does I/O or reads the clock.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::Deserialize;

use crate::auth::Caller;

/// Most principals one certificate may carry.
pub const MAX_PRINCIPALS: usize = crate::text::MAX_PRINCIPALS;
/// The shortest ttl any certificate may have.
pub const MIN_TTL_SECS: u64 = 60;
/// Longest accepted reason, in bytes.
pub const MAX_REASON_LEN: usize = crate::text::MAX_FREE_TEXT_LEN;

/// Extensions sshd knows; anything else in a role is a policy error.
pub const KNOWN_EXTENSIONS: &[&str] = &[
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
    "no-touch-required",
];

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Server-wide defaults.
    pub defaults: Defaults,
    roles: BTreeMap<String, Role>,
}

/// `[defaults]` after validation; durations in seconds.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Upper bound of every role's `max_ttl`.
    pub max_ttl: u64,
    /// How long a request may wait for approval.
    pub pending_ttl: u64,
    /// How far `valid_after` lies before issuance, for clock skew.
    pub backdate: u64,
    /// Who may revoke anyone's certificates.
    pub revokers: Vec<Selector>,
    /// Who may read the audit trail.
    pub auditors: Vec<Selector>,
}

/// How a role's requests are approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    /// `approvals_required` distinct entitled approvers, never the requester.
    Manual {
        /// Distinct approvals needed.
        required: u32,
    },
    /// Issued at once; meant for workloads.
    Auto,
}

/// One validated `[[role]]`.
#[derive(Debug, Clone)]
pub struct Role {
    /// Role name.
    pub name: String,
    /// Who may request this role.
    pub requesters: Vec<Selector>,
    /// Who may approve requests for it.
    pub approvers: Vec<Selector>,
    /// Who may revoke its certificates (besides `defaults.revokers` and the requester).
    pub revokers: Vec<Selector>,
    /// The approval rule.
    pub approval: Approval,
    /// Shortest accepted reason.
    pub reason_min_len: usize,
    /// A pattern the reason must match (searched, so anchor it with `^`).
    pub reason_pattern: Option<Regex>,
    /// Principals a certificate of this role may carry.
    pub logins: Vec<String>,
    /// ttl when the request names none.
    pub default_ttl: u64,
    /// Longest ttl.
    pub max_ttl: u64,
    /// Extensions granted, sorted.
    pub extensions: Vec<String>,
    /// `source-address` critical option, comma-joined.
    pub source_address: Option<String>,
    /// `force-command` critical option.
    pub force_command: Option<String>,
    /// Break-glass limits, when enabled.
    pub break_glass: Option<BreakGlass>,
    /// CI workloads (OIDC tokens) that may use this role; only for `approval = "auto"`.
    pub workloads: Vec<Workload>,
}

/// A CI workload bound to a role by its token's issuer, audience and claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The token's `iss`, exactly.
    pub issuer: String,
    /// The token's `aud`, when it must differ from the issuer's configured audience.
    pub audience: Option<String>,
    /// Claims the token must carry: exact values, or a prefix where the value ends in `*`.
    pub claims: BTreeMap<String, String>,
}

impl Workload {
    /// Whether a verified token's claims select this workload.
    pub fn matches(
        &self,
        issuer: &str,
        audiences: &[String],
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        if self.issuer != issuer {
            return false;
        }
        if let Some(aud) = &self.audience
            && !audiences.contains(aud)
        {
            return false;
        }
        self.claims.iter().all(|(name, want)| {
            let Some(serde_json::Value::String(got)) = claims.get(name) else {
                return false;
            };
            match want.strip_suffix('*') {
                Some(prefix) => got.starts_with(prefix),
                None => got == want,
            }
        })
    }
}

/// Break-glass settings of a role.
#[derive(Debug, Clone, Copy)]
pub struct BreakGlass {
    /// Longest break-glass ttl.
    pub max_ttl: u64,
}

/// `user:NAME` or `group:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One user by name.
    User(String),
    /// Every member of a group.
    Group(String),
}

impl Selector {
    /// Whether the caller is selected.
    pub fn matches(&self, caller: &Caller) -> bool {
        match self {
            Selector::User(name) => caller.name == *name,
            Selector::Group(group) => caller.groups.iter().any(|g| g == group),
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("selector {s:?} must be \"user:NAME\" or \"group:NAME\""))?;
        if !valid_name(name) {
            return Err(format!(
                "selector {s:?}: name must match [A-Za-z0-9._-]{{1,64}}"
            ));
        }
        match kind {
            "user" => Ok(Selector::User(name.to_owned())),
            "group" => Ok(Selector::Group(name.to_owned())),
            _ => Err(format!(
                "selector {s:?} must start with \"user:\" or \"group:\""
            )),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::User(n) => write!(f, "user:{n}"),
            Selector::Group(g) => write!(f, "group:{g}"),
        }
    }
}

/// Whether any selector selects the caller. An empty list selects nobody.
pub fn selects(selectors: &[Selector], caller: &Caller) -> bool {
    selectors.iter().any(|s| s.matches(caller))
}

/// A user, group or role name: `[A-Za-z0-9._-]{1,64}`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A certificate principal: `^[A-Za-z0-9._][A-Za-z0-9._@-]{0,63}$`.
///
/// No commas (some matching paths split on them), spaces, wildcards or control characters.
pub fn valid_principal(s: &str) -> bool {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    bytes.len() <= 64
        && (first.is_ascii_alphanumeric() || matches!(first, b'.' | b'_'))
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Validates one `source-address` entry the way sshd does: `[0-9a-fA-F.:/]`, a parseable
/// address or CIDR, no host bits set.
pub fn valid_source_address(entry: &str) -> Result<(), String> {
    if entry.is_empty() {
        return Err("empty source_address entry".into());
    }
    if !entry
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/'))
    {
        return Err(format!(
            "source_address {entry:?} may only contain hex digits, '.', ':' and '/'"
        ));
    }
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry, None),
    };
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("source_address {entry:?} is not an IP address or CIDR"))?;
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    let Some(prefix) = prefix else {
        return Ok(());
    };
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= bits)
        .ok_or_else(|| format!("source_address {entry:?} has a bad prefix length"))?;
    let value: u128 = match addr {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    };
    let host_bits = bits - prefix;
    let mask = match host_bits {
        0 => 0,
        128.. => u128::MAX,
        n => (1u128 << n) - 1,
    };
    if value & mask != 0 {
        return Err(format!(
            "source_address {entry:?} has host bits set (sshd rejects the certificate)"
        ));
    }
    Ok(())
}

/// Parses a duration such as `90s`, `30m` or `1h` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s.trim())
        .map(|d| d.as_secs())
        .map_err(|e| format!("{s:?} is not a duration like \"90s\", \"30m\" or \"1h\": {e}"))
}

/// Why a request does not fit its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed input: INVALID_ARGUMENT.
    Invalid(String),
    /// Well-formed but outside what policy allows: PERMISSION_DENIED.
    Denied(String),
}

/// What a request asks for, once checked against its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Principals, in the role's order, no duplicates.
    pub principals: Vec<String>,
    /// The ttl in seconds.
    pub ttl_secs: u64,
}

impl Policy {
    /// Parses and validates a policy file; `origin` names it in error messages.
    ///
    /// `server_max_ttl` bounds every ttl in the file. All problems are reported together.
    pub fn parse(text: &str, origin: &str, server_max_ttl: u64) -> Result<Self, PolicyError> {
        // Syntax first: a file that is not TOML has no keys to report on.
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(1, |s| {
                text[..s.start.min(text.len())].lines().count().max(1)
            });
            PolicyError {
                errors: vec![format!("{origin}:{line}: {}", one_line(e.message()))],
            }
        })?;
        let lines = KeyLines::index(text);
        let located = |errors: Vec<String>| PolicyError {
            errors: errors
                .into_iter()
                .map(|e| match lines.line_of(&e) {
                    Some(line) => format!("{origin}:{line}: {e}"),
                    None => format!("{origin}: {e}"),
                })
                .collect(),
        };
        let raw: RawPolicy = match toml::Value::Table(table.clone()).try_into() {
            Ok(raw) => raw,
            // Type errors and unknown keys: found key by key, so every one is reported.
            Err(e) => {
                let mut errors = structural_errors(&table);
                if errors.is_empty() {
                    errors.push(one_line(e.message()));
                }
                return Err(located(errors));
            }
        };
        let mut errors = Vec::new();
        let policy = validate(raw, server_max_ttl, &mut errors);
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(located(errors))
        }
    }

    /// The role named `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// All roles, by name.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }
}

impl Role {
    /// Whether the caller may request this role.
    pub fn may_request(&self, caller: &Caller) -> bool {
        selects(&self.requesters, caller)
    }

    /// Whether the caller may approve requests of this role. This says nothing about a
    /// particular request: the requester never approves their own (see `approvals`).
    pub fn may_approve(&self, caller: &Caller) -> bool {
        selects(&self.approvers, caller)
    }

    /// Whether the caller may revoke any certificate of this role.
    pub fn may_revoke(&self, caller: &Caller, defaults: &Defaults) -> bool {
        selects(&self.revokers, caller) || selects(&defaults.revokers, caller)
    }

    /// Checks requested principals, ttl and reason against the role.
    ///
    /// An empty `principals` means every login of the role; `ttl_secs` of `None` means the
    /// role's default.
    pub fn check_request(
        &self,
        principals: &[String],
        ttl_secs: Option<u64>,
        reason: &str,
    ) -> Result<Checked, Refusal> {
        if principals.len() > MAX_PRINCIPALS {
            return Err(Refusal::Invalid(format!(
                "at most {MAX_PRINCIPALS} principals per certificate"
            )));
        }
        for p in principals {
            if !valid_principal(p) {
                return Err(Refusal::Invalid(format!(
                    "principal {p:?} is malformed: it must match ^[A-Za-z0-9._][A-Za-z0-9._@-]{{0,63}}$"
                )));
            }
        }
        // Check every principal, not just the first.
        if let Some(p) = principals.iter().find(|p| !self.logins.contains(p)) {
            return Err(Refusal::Denied(format!(
                "principal {p:?} is not allowed for role {}; allowed: {}",
                self.name,
                self.logins.join(", ")
            )));
        }
        let chosen: Vec<String> = if principals.is_empty() {
            self.logins.clone()
        } else {
            self.logins
                .iter()
                .filter(|l| principals.contains(l))
                .cloned()
                .collect()
        };
        if chosen.is_empty() {
            // Unreachable with a validated role, but an empty list means "anyone" to some
            // sshd paths, so it is refused here whatever happens above.
            return Err(Refusal::Invalid("no principals to sign".into()));
        }
        let ttl_secs = ttl_secs.unwrap_or(self.default_ttl);
        if ttl_secs < MIN_TTL_SECS {
            return Err(Refusal::Invalid(format!(
                "ttl {} is below the minimum of 1m",
                fmt_secs(ttl_secs)
            )));
        }
        if ttl_secs > self.max_ttl {
            return Err(Refusal::Denied(format!(
                "ttl {} exceeds role {}'s max_ttl {}",
                fmt_secs(ttl_secs),
                self.name,
                fmt_secs(self.max_ttl)
            )));
        }
        let reason = reason.trim();
        crate::text::free_text("reason", reason).map_err(Refusal::Invalid)?;
        if reason.chars().count() < self.reason_min_len {
            return Err(Refusal::Invalid(format!(
                "reason must be at least {} characters for role {}",
                self.reason_min_len, self.name
            )));
        }
        if let Some(pattern) = &self.reason_pattern
            && !pattern.is_match(reason)
        {
            return Err(Refusal::Invalid(format!(
                "reason must match {} for role {} (for example a ticket id)",
                pattern.as_str(),
                self.name
            )));
        }
        Ok(Checked {
            principals: chosen,
            ttl_secs,
        })
    }
}

/// Formats seconds as a short human duration (`90s`, `30m`, `1h 30m`).
pub fn fmt_secs(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// Every problem found in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// One line per problem, each naming the file and key.
    pub errors: Vec<String>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.errors.join("\n"))
    }
}

impl std::error::Error for PolicyError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    role: Vec<RawRole>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    max_ttl: Option<String>,
    pending_ttl: Option<String>,
    backdate: Option<String>,
    #[serde(default)]
    revokers: Vec<String>,
    #[serde(default)]
    auditors: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: String,
    #[serde(default)]
    requesters: Vec<String>,
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default)]
    revokers: Vec<String>,
    approval: Option<String>,
    approvals_required: Option<i64>,
    reason_min_len: Option<i64>,
    reason_pattern: Option<String>,
    #[serde(default)]
    logins: Vec<String>,
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    extensions: Option<Vec<String>>,
    source_address: Option<Vec<String>>,
    force_command: Option<String>,
    break_glass: Option<RawBreakGlass>,
    workloads: Option<Vec<RawWorkload>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    issuer: String,
    audience: Option<String>,
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakGlass {
    #[serde(default)]
    enabled: bool,
    max_ttl: Option<String>,
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every type error and unknown key of a policy that does not deserialize, each named by
/// its key path (`role[1] (db).approvals_required`): each key is deserialized on its own,
/// so one bad value does not hide the next.
fn structural_errors(table: &toml::Table) -> Vec<String> {
    let mut errors = Vec::new();
    for (section, value) in table {
        match (section.as_str(), value) {
            ("defaults", toml::Value::Table(defaults)) => {
                for (key, value) in defaults {
                    let probe = toml::Table::from_iter([(key.clone(), value.clone())]);
                    if let Err(e) = toml::Value::Table(probe).try_into::<RawDefaults>() {
                        errors.push(format!("defaults.{key}: {}", one_line(e.message())));
                    }
                }
            }
            ("defaults", _) => errors.push("defaults: must be a table ([defaults])".into()),
            ("role", toml::Value::Array(roles)) => {
                for (i, role) in roles.iter().enumerate() {
                    let toml::Value::Table(role) = role else {
                        errors.push(format!("role[{i}]: must be a table ([[role]])"));
                        continue;
                    };
                    let name = role.get("name").and_then(toml::Value::as_str);
                    let at = match name {
                        Some(n) if !n.is_empty() => format!("role[{i}] ({n})"),
                        _ => format!("role[{i}]"),
                    };
                    if !role.contains_key("name") {
                        errors.push(format!("{at}.name: missing; every role needs a name"));
                    }
                    for (key, value) in role {
                        let mut probe = toml::Table::from_iter([(key.clone(), value.clone())]);
                        probe
                            .entry("name")
                            .or_insert_with(|| toml::Value::String("probe".into()));
                        if let Err(e) = toml::Value::Table(probe).try_into::<RawRole>() {
                            errors.push(format!("{at}.{key}: {}", one_line(e.message())));
                        }
                    }
                }
            }
            ("role", _) => errors.push("role: must be an array of tables ([[role]])".into()),
            (other, _) => errors.push(format!(
                "{other}: unknown section; a policy has [defaults] and [[role]]"
            )),
        }
    }
    errors
}

/// The line of each key of `[defaults]` and of each `[[role]]`, to name where an error is.
#[derive(Debug, Default)]
struct KeyLines {
    defaults: Option<(usize, BTreeMap<String, usize>)>,
    roles: Vec<(usize, BTreeMap<String, usize>)>,
}

impl KeyLines {
    fn index(text: &str) -> Self {
        enum At {
            Defaults,
            Role,
            Other,
        }
        let mut lines = KeyLines::default();
        let mut at = At::Other;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.starts_with("[[role]]") {
                lines.roles.push((n, BTreeMap::new()));
                at = At::Role;
            } else if line.starts_with("[defaults]") {
                lines.defaults.get_or_insert((n, BTreeMap::new()));
                at = At::Defaults;
            } else if line.starts_with('[') {
                at = At::Other;
            } else if let Some((key, _)) = line.split_once('=') {
                let key = key.trim().trim_matches('"').to_owned();
                let keys = match at {
                    At::Defaults => lines.defaults.as_mut().map(|d| &mut d.1),
                    At::Role => lines.roles.last_mut().map(|r| &mut r.1),
                    At::Other => None,
                };
                if let Some(keys) = keys {
                    keys.entry(key).or_insert(n);
                }
            }
        }
        lines
    }

    /// The line an error message (`defaults.KEY: ...`, `role[I] (NAME).KEY: ...`) is about.
    fn line_of(&self, error: &str) -> Option<usize> {
        let key_of = |rest: &str| -> String {
            rest.strip_prefix('.')
                .unwrap_or_default()
                .split([':', '.', ' ', '['])
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        if let Some(rest) = error.strip_prefix("defaults") {
            let (header, keys) = self.defaults.as_ref()?;
            return Some(keys.get(&key_of(rest)).copied().unwrap_or(*header));
        }
        let rest = error.strip_prefix("role[")?;
        let (index, rest) = rest.split_once(']')?;
        let (header, keys) = self.roles.get(index.parse::<usize>().ok()?)?;
        // Skip ` (NAME)` after the index.
        let rest = match rest.strip_prefix(" (") {
            Some(named) => named.split_once(')').map_or("", |(_, r)| r),
            None => rest,
        };
        Some(keys.get(&key_of(rest)).copied().unwrap_or(*header))
    }
}

fn duration_field(value: Option<&str>, default: u64, key: &str, errors: &mut Vec<String>) -> u64 {
    match value.map(parse_duration) {
        None => default,
        Some(Ok(secs)) => secs,
        Some(Err(e)) => {
            errors.push(format!("{key}: {e}"));
            default
        }
    }
}

fn selectors(raw: &[String], key: &str, errors: &mut Vec<String>) -> Vec<Selector> {
    raw.iter()
        .filter_map(|s| match Selector::parse(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                errors.push(format!("{key}: {e}"));
                None
            }
        })
        .collect()
}

fn validate(raw: RawPolicy, server_max_ttl: u64, errors: &mut Vec<String>) -> Policy {
    let d = &raw.defaults;
    let max_ttl = duration_field(
        d.max_ttl.as_deref(),
        server_max_ttl.min(8 * 3600),
        "defaults.max_ttl",
        errors,
    );
    if max_ttl > server_max_ttl {
        errors.push(format!(
            "defaults.max_ttl {} exceeds the server's max_ttl {}",
            fmt_secs(max_ttl),
            fmt_secs(server_max_ttl)
        ));
    }
    if max_ttl < MIN_TTL_SECS {
        errors.push("defaults.max_ttl must be at least 1m".into());
    }
    let pending_ttl = duration_field(
        d.pending_ttl.as_deref(),
        3600,
        "defaults.pending_ttl",
        errors,
    );
    if !(MIN_TTL_SECS..=7 * 24 * 3600).contains(&pending_ttl) {
        errors.push("defaults.pending_ttl must be between 1m and 7d".into());
    }
    let backdate = duration_field(d.backdate.as_deref(), 60, "defaults.backdate", errors);
    if backdate > 3600 {
        errors.push("defaults.backdate must be at most 1h".into());
    }
    let defaults = Defaults {
        max_ttl,
        pending_ttl,
        backdate,
        revokers: selectors(&d.revokers, "defaults.revokers", errors),
        auditors: selectors(&d.auditors, "defaults.auditors", errors),
    };

    let mut roles = BTreeMap::new();
    for (i, r) in raw.role.into_iter().enumerate() {
        let at = if r.name.is_empty() {
            format!("role[{i}]")
        } else {
            format!("role[{i}] ({})", r.name)
        };
        if let Some(role) = validate_role(r, &at, &defaults, errors) {
            if roles.contains_key(&role.name) {
                errors.push(format!("{at}: duplicate role name"));
            } else {
                roles.insert(role.name.clone(), role);
            }
        }
    }
    Policy { defaults, roles }
}

fn validate_role(
    r: RawRole,
    at: &str,
    defaults: &Defaults,
    errors: &mut Vec<String>,
) -> Option<Role> {
    let before = errors.len();
    if !valid_name(&r.name) {
        errors.push(format!("{at}.name: must match [A-Za-z0-9._-]{{1,64}}"));
    }
    let requesters = selectors(&r.requesters, &format!("{at}.requesters"), errors);
    let approvers = selectors(&r.approvers, &format!("{at}.approvers"), errors);
    let revokers = selectors(&r.revokers, &format!("{at}.revokers"), errors);
    let workloads = validate_workloads(r.workloads.unwrap_or_default(), at, errors);
    let approval = match r.approval.as_deref().unwrap_or("manual") {
        "manual" => {
            let required = r.approvals_required.unwrap_or(1);
            if !(1..=10).contains(&required) {
                errors.push(format!("{at}.approvals_required: must be between 1 and 10"));
            }
            if approvers.is_empty() {
                errors.push(format!(
                    "{at}.approvers: a manual role needs at least one approver selector"
                ));
            }
            Approval::Manual {
                required: u32::try_from(required.clamp(1, 10)).unwrap_or(1),
            }
        }
        "auto" => {
            if r.approvals_required.is_some() {
                errors.push(format!(
                    "{at}.approvals_required: not allowed with approval = \"auto\""
                ));
            }
            Approval::Auto
        }
        other => {
            errors.push(format!(
                "{at}.approval: {other:?} must be \"manual\" or \"auto\""
            ));
            Approval::Manual { required: 1 }
        }
    };
    if requesters.is_empty() && workloads.is_empty() {
        errors.push(format!(
            "{at}.requesters: empty and no workloads, so nobody could request this role"
        ));
    }
    if !workloads.is_empty() && approval != Approval::Auto {
        errors.push(format!(
            "{at}.workloads: only roles with approval = \"auto\" may be used by workloads"
        ));
    }
    let reason_min_len = match r.reason_min_len {
        None => 1,
        Some(n) if (0..=MAX_REASON_LEN as i64).contains(&n) => n as usize,
        Some(_) => {
            errors.push(format!(
                "{at}.reason_min_len: must be between 0 and {MAX_REASON_LEN}"
            ));
            1
        }
    };
    let reason_pattern = r
        .reason_pattern
        .as_deref()
        .and_then(|p| match Regex::new(p) {
            Ok(re) => Some(re),
            Err(e) => {
                errors.push(format!("{at}.reason_pattern: {e}"));
                None
            }
        });
    if r.logins.is_empty() {
        errors.push(format!("{at}.logins: at least one login is required"));
    }
    if r.logins.len() > MAX_PRINCIPALS {
        errors.push(format!("{at}.logins: at most {MAX_PRINCIPALS}"));
    }
    let mut logins = Vec::new();
    for l in &r.logins {
        if !valid_principal(l) {
            errors.push(format!(
                "{at}.logins: {l:?} is not a valid principal (^[A-Za-z0-9._][A-Za-z0-9._@-]{{0,63}}$)"
            ));
        } else if logins.contains(l) {
            errors.push(format!("{at}.logins: {l:?} is listed twice"));
        } else {
            logins.push(l.clone());
        }
    }
    let max_ttl = duration_field(
        r.max_ttl.as_deref(),
        defaults.max_ttl,
        &format!("{at}.max_ttl"),
        errors,
    );
    if max_ttl > defaults.max_ttl {
        errors.push(format!(
            "{at}.max_ttl: {} exceeds defaults.max_ttl {}",
            fmt_secs(max_ttl),
            fmt_secs(defaults.max_ttl)
        ));
    }
    if max_ttl < MIN_TTL_SECS {
        errors.push(format!("{at}.max_ttl: must be at least 1m"));
    }
    let default_ttl = duration_field(
        r.default_ttl.as_deref(),
        max_ttl.min(30 * 60),
        &format!("{at}.default_ttl"),
        errors,
    );
    if default_ttl > max_ttl || default_ttl < MIN_TTL_SECS {
        errors.push(format!(
            "{at}.default_ttl: must be between 1m and the role's max_ttl"
        ));
    }
    let mut extensions = r.extensions.unwrap_or_else(|| vec!["permit-pty".into()]);
    for e in &extensions {
        if !KNOWN_EXTENSIONS.contains(&e.as_str()) {
            errors.push(format!(
                "{at}.extensions: {e:?} is not an extension sshd knows ({})",
                KNOWN_EXTENSIONS.join(", ")
            ));
        }
    }
    extensions.sort();
    extensions.dedup();
    let source_address = match r.source_address {
        None => None,
        Some(list) if list.is_empty() => {
            errors.push(format!(
                "{at}.source_address: empty; remove the key to allow any address"
            ));
            None
        }
        Some(list) => {
            for entry in &list {
                if let Err(e) = valid_source_address(entry) {
                    errors.push(format!("{at}.source_address: {e}"));
                }
            }
            Some(list.join(","))
        }
    };
    if let Some(cmd) = &r.force_command
        && (cmd.trim().is_empty() || cmd.chars().any(char::is_control))
    {
        errors.push(format!(
            "{at}.force_command: must be a non-empty command without control characters"
        ));
    }
    let break_glass = match r.break_glass {
        Some(bg) if bg.enabled => {
            let bg_max = duration_field(
                bg.max_ttl.as_deref(),
                max_ttl.min(15 * 60),
                &format!("{at}.break_glass.max_ttl"),
                errors,
            );
            if bg_max > max_ttl || bg_max < MIN_TTL_SECS {
                errors.push(format!(
                    "{at}.break_glass.max_ttl: must be between 1m and the role's max_ttl"
                ));
            }
            Some(BreakGlass { max_ttl: bg_max })
        }
        _ => None,
    };
    if errors.len() > before {
        return None;
    }
    Some(Role {
        name: r.name,
        requesters,
        approvers,
        revokers,
        approval,
        reason_min_len,
        reason_pattern,
        logins,
        default_ttl,
        max_ttl,
        extensions,
        source_address,
        force_command: r.force_command,
        break_glass,
        workloads,
    })
}

fn validate_workloads(raw: Vec<RawWorkload>, at: &str, errors: &mut Vec<String>) -> Vec<Workload> {
    let mut out = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let here = format!("{at}.workloads[{i}]");
        let before = errors.len();
        if w.issuer.trim().is_empty() {
            errors.push(format!("{here}.issuer: must name the token issuer"));
        }
        // An empty claim set would admit every token of the issuer (every repository on
        // GitHub, say): refuse it, like any empty allow-list.
        if w.claims.is_empty() {
            errors.push(format!(
                "{here}.claims: at least one claim (e.g. repository) must be bound"
            ));
        }
        for (name, value) in &w.claims {
            let stem = value.strip_suffix('*').unwrap_or(value);
            if stem.is_empty() || stem.contains('*') {
                errors.push(format!(
                    "{here}.claims.{name}: {value:?} must be a value, optionally ending in one '*'"
                ));
            }
        }
        if errors.len() == before {
            out.push(Workload {
                issuer: w.issuer,
                audience: w.audience,
                claims: w.claims,
            });
        }
    }
    out
}

/// The policy `moshca-server init` writes: valid, commented, and safe to start with.
pub const EXAMPLE: &str = r#"# moshca policy. Reloaded on SIGHUP; an invalid file is refused and the old one stays.

[defaults]
max_ttl = "8h"          # no role may exceed this
pending_ttl = "1h"      # unapproved requests expire after this
backdate = "1m"         # valid_after = issue time - backdate, for clock skew
revokers = ["group:security"]   # may revoke anyone's certificates

[[role]]
name = "db-oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
approval = "manual"     # "auto" issues at once, without an approver
approvals_required = 1
reason_min_len = 10
logins = ["postgres", "ubuntu"]
default_ttl = "30m"
max_ttl = "1h"
extensions = ["permit-pty"]
# revokers = ["group:dba-leads"]  # may revoke this role's certificates too
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_error_is_reported_at_once_with_its_line_and_key() {
        let text = r#"[defaults]
max_ttl = 8

[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
approvals_required = "one"
logins = ["postgres"]
colour = "blue"

[[role]]
name = "web"
logins = "www"
"#;
        let e = Policy::parse(text, "policy.toml", DAY).unwrap_err();
        let all = e.errors.join("\n");
        for expected in [
            "policy.toml:2: defaults.max_ttl:",
            "policy.toml:8: role[0] (db).approvals_required:",
            "policy.toml:10: role[0] (db).colour:",
            "policy.toml:14: role[1] (web).logins:",
        ] {
            assert!(all.contains(expected), "{expected} missing from\n{all}");
        }
        assert_eq!(e.errors.len(), 4, "{all}");
    }

    #[test]
    fn value_errors_carry_their_line_too() {
        let text = "[[role]]\nname = \"db\"\nlogins = [\"postgres\"]\nmax_ttl = \"forever\"\n";
        let e = Policy::parse(text, "p.toml", DAY).unwrap_err();
        assert!(
            e.errors
                .iter()
                .any(|l| l.starts_with("p.toml:4: role[0] (db).max_ttl")),
            "{:?}",
            e.errors
        );
        let e = Policy::parse("[[role]\nname=1", "p.toml", DAY).unwrap_err();
        assert!(e.errors[0].starts_with("p.toml:1: "), "{:?}", e.errors);
    }

    const DAY: u64 = 24 * 3600;

    fn caller(name: &str, groups: &[&str]) -> Caller {
        Caller {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            proof: crate::auth::Proof::Account,
        }
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text, "policy.toml", DAY).unwrap()
    }

    fn errors(text: &str) -> Vec<String> {
        Policy::parse(text, "policy.toml", DAY).unwrap_err().errors
    }

    const BASIC: &str = r#"
[[role]]
name = "db"
requesters = ["group:oncall", "user:alice"]
approvers = ["group:leads"]
logins = ["postgres", "ubuntu"]
max_ttl = "1h"
"#;

    fn names(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn example_policy_is_valid() {
        let p = policy(EXAMPLE);
        let role = p.role("db-oncall").unwrap();
        assert_eq!(role.max_ttl, 3600);
        assert_eq!(role.default_ttl, 1800);
        assert_eq!(role.approval, Approval::Manual { required: 1 });
    }

    #[test]
    fn defaults_apply() {
        let p = policy(BASIC);
        let role = p.role("db").unwrap();
        assert_eq!(role.extensions, vec!["permit-pty"]);
        assert_eq!(role.default_ttl, 30 * 60);
        assert_eq!(p.defaults.backdate, 60);
        assert_eq!(p.defaults.pending_ttl, 3600);
    }

    #[test]
    fn all_errors_reported_at_once_with_file_and_key() {
        let errs = errors(
            r#"
[[role]]
name = "bad role"
requesters = ["team:x"]
approvers = []
logins = ["a,b", "*"]
max_ttl = "forever"
extensions = ["permit-everything"]
source_address = ["127.0.0.1/8"]
"#,
        );
        let all = errs.join("\n");
        for needle in [
            "role[0] (bad role).name",
            "requesters",
            "approvers",
            "\"a,b\"",
            "\"*\"",
            "max_ttl",
            "permit-everything",
            "host bits",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // Each names the file and the line of its key.
        assert!(
            errs.iter().all(|e| {
                e.strip_prefix("policy.toml:")
                    .and_then(|r| r.split_once(": "))
                    .is_some_and(|(line, _)| line.parse::<usize>().is_ok())
            }),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errs = errors("[[role]]\nname = \"x\"\nlogins = [\"a\"]\nprincipals = [\"root\"]\n");
        assert!(errs[0].contains("principals"), "{errs:?}");
    }

    #[test]
    fn role_max_ttl_above_defaults_refused() {
        let errs = errors(
            "[defaults]\nmax_ttl = \"1h\"\n[[role]]\nname = \"x\"\nrequesters=[\"user:a\"]\napprovers=[\"user:b\"]\nlogins=[\"a\"]\nmax_ttl=\"2h\"\n",
        );
        assert!(errs.iter().any(|e| e.contains("exceeds defaults.max_ttl")));
    }

    #[test]
    fn defaults_max_ttl_above_server_refused() {
        let errs = errors("[defaults]\nmax_ttl = \"48h\"\n");
        assert!(errs[0].contains("server's max_ttl"), "{errs:?}");
    }

    #[test]
    fn empty_selector_lists_select_nobody() {
        let errs = errors("[[role]]\nname = \"x\"\napprovers=[\"user:b\"]\nlogins=[\"a\"]\n");
        assert!(errs.iter().any(|e| e.contains("nobody could request")));
        assert!(!selects(&[], &caller("root", &["admin"])));
    }

    #[test]
    fn manual_role_without_approvers_refused() {
        let errs = errors("[[role]]\nname = \"x\"\nrequesters=[\"user:a\"]\nlogins=[\"a\"]\n");
        assert!(errs.iter().any(|e| e.contains("at least one approver")));
    }

    #[test]
    fn workloads_need_claims_and_an_auto_role() {
        let errs = errors(
            "[[role]]\nname = \"x\"\napproval=\"auto\"\nlogins=[\"a\"]\nworkloads=[{issuer=\"https://x\"}]\n",
        );
        assert!(
            errs.iter().any(|e| e.contains("at least one claim")),
            "{errs:?}"
        );
        let errs = errors(
            "[[role]]\nname = \"x\"\napprovers=[\"user:b\"]\nlogins=[\"a\"]\nworkloads=[{issuer=\"https://x\", claims={repository=\"a/b\"}}]\n",
        );
        assert!(
            errs.iter().any(|e| e.contains("approval = \"auto\"")),
            "{errs:?}"
        );
        let errs = errors(
            "[[role]]\nname = \"x\"\napproval=\"auto\"\nlogins=[\"a\"]\nworkloads=[{issuer=\"https://x\", claims={repository=\"*\"}}]\n",
        );
        assert!(errs.iter().any(|e| e.contains("repository")), "{errs:?}");
    }

    #[test]
    fn workload_claims_match_exactly_or_by_explicit_prefix() {
        let p = policy(
            r#"
[[role]]
name = "deploy"
approval = "auto"
logins = ["deploy"]
workloads = [{ issuer = "https://t", claims = { repository = "acme/app", ref = "refs/heads/release-*" } }]
"#,
        );
        let w = &p.role("deploy").unwrap().workloads[0];
        let claims = |repo: &str, r: &str| {
            serde_json::json!({"repository": repo, "ref": r})
                .as_object()
                .unwrap()
                .clone()
        };
        let aud = vec!["moshca".to_owned()];
        assert!(w.matches(
            "https://t",
            &aud,
            &claims("acme/app", "refs/heads/release-1")
        ));
        assert!(!w.matches(
            "https://t",
            &aud,
            &claims("acme/app2", "refs/heads/release-1")
        ));
        assert!(!w.matches(
            "https://t",
            &aud,
            &claims("acme/ap", "refs/heads/release-1")
        ));
        assert!(!w.matches("https://t", &aud, &claims("acme/app", "refs/heads/main")));
        assert!(!w.matches(
            "https://other",
            &aud,
            &claims("acme/app", "refs/heads/release-1")
        ));
        let missing = serde_json::json!({"repository": "acme/app"})
            .as_object()
            .unwrap()
            .clone();
        assert!(!w.matches("https://t", &aud, &missing));
    }

    #[test]
    fn selectors_match_user_and_group() {
        let p = policy(BASIC);
        let role = p.role("db").unwrap();
        assert!(role.may_request(&caller("alice", &[])));
        assert!(role.may_request(&caller("carol", &["oncall"])));
        assert!(!role.may_request(&caller("mallory", &["oncall-x"])));
        assert!(role.may_approve(&caller("bob", &["leads"])));
        assert!(!role.may_approve(&caller("alice", &["oncall"])));
    }

    #[test]
    fn empty_principals_mean_all_logins_never_empty() {
        let role = policy(BASIC).role("db").unwrap().clone();
        let c = role.check_request(&[], None, "INC-1 lag").unwrap();
        assert_eq!(names(&c.principals), ["postgres", "ubuntu"]);
        assert_eq!(c.ttl_secs, 1800);
    }

    #[test]
    fn every_principal_is_checked_not_just_the_first() {
        let role = policy(BASIC).role("db").unwrap().clone();
        let r = role.check_request(&["postgres".into(), "root".into()], None, "x");
        assert!(matches!(r, Err(Refusal::Denied(m)) if m.contains("\"root\"")));
    }

    #[test]
    fn hostile_principals_are_malformed() {
        let role = policy(BASIC).role("db").unwrap().clone();
        for bad in [
            "",
            "*",
            "a,b",
            "a b",
            "a\nb",
            "a\0b",
            "-x",
            "@x",
            "postgres,root",
        ] {
            let r = role.check_request(&[bad.to_owned()], None, "x");
            assert!(matches!(r, Err(Refusal::Invalid(_))), "{bad:?}: {r:?}");
        }
        let long = "a".repeat(65);
        assert!(matches!(
            role.check_request(&[long], None, "x"),
            Err(Refusal::Invalid(_))
        ));
        let many: Vec<String> = (0..33).map(|i| format!("u{i}")).collect();
        assert!(matches!(
            role.check_request(&many, None, "x"),
            Err(Refusal::Invalid(m)) if m.contains("at most 32")
        ));
    }

    #[test]
    fn principal_grammar() {
        assert!(valid_principal("postgres"));
        assert!(valid_principal("postgres@db-prod"));
        assert!(valid_principal("_svc.x"));
        assert!(valid_principal(&"a".repeat(64)));
        assert!(!valid_principal(&"a".repeat(65)));
        assert!(!valid_principal("caf\u{e9}"));
    }

    #[test]
    fn ttl_bounds() {
        let role = policy(BASIC).role("db").unwrap().clone();
        assert!(matches!(
            role.check_request(&[], Some(59), "x"),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            role.check_request(&[], Some(0), "x"),
            Err(Refusal::Invalid(_))
        ));
        assert_eq!(role.check_request(&[], Some(60), "x").unwrap().ttl_secs, 60);
        assert_eq!(
            role.check_request(&[], Some(3600), "x").unwrap().ttl_secs,
            3600
        );
        assert!(matches!(
            role.check_request(&[], Some(3601), "x"),
            Err(Refusal::Denied(m)) if m.contains("max_ttl")
        ));
        assert!(matches!(
            role.check_request(&[], Some(u64::MAX), "x"),
            Err(Refusal::Denied(_))
        ));
    }

    #[test]
    fn reason_rules() {
        let p = policy(
            r#"
[[role]]
name = "db"
requesters = ["user:a"]
approvers = ["user:b"]
logins = ["postgres"]
reason_min_len = 10
reason_pattern = "^(INC|CHG)-[0-9]+"
"#,
        );
        let role = p.role("db").unwrap();
        assert!(
            matches!(role.check_request(&[], None, "short"), Err(Refusal::Invalid(m)) if m.contains("at least 10"))
        );
        assert!(
            matches!(role.check_request(&[], None, "because I want to"), Err(Refusal::Invalid(m)) if m.contains("^(INC|CHG)-[0-9]+"))
        );
        assert!(
            role.check_request(&[], None, "INC-4312 replica lag")
                .is_ok()
        );
        assert!(matches!(
            role.check_request(&[], None, "INC-4312 lag\u{7}"),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn source_address_rules() {
        assert!(valid_source_address("10.0.0.0/8").is_ok());
        assert!(valid_source_address("192.0.2.7").is_ok());
        assert!(valid_source_address("2001:db8::/32").is_ok());
        assert!(valid_source_address("0.0.0.0/0").is_ok());
        assert!(valid_source_address("::/0").is_ok());
        assert!(valid_source_address("8000::/0").is_err());
        assert!(valid_source_address("127.0.0.1/8").is_err());
        assert!(valid_source_address("10.0.0.0/33").is_err());
        assert!(valid_source_address("").is_err());
        assert!(valid_source_address("10.0.0.0/8 ").is_err());
        assert!(valid_source_address("example.com").is_err());
    }

    #[test]
    fn source_address_joined_and_unknown_extension_refused() {
        let p = policy(
            "[[role]]\nname=\"x\"\nrequesters=[\"user:a\"]\napprovers=[\"user:b\"]\nlogins=[\"a\"]\nsource_address=[\"10.0.0.0/8\",\"192.0.2.1\"]\nextensions=[\"permit-pty\",\"permit-port-forwarding\"]\n",
        );
        let role = p.role("x").unwrap();
        assert_eq!(role.source_address.as_deref(), Some("10.0.0.0/8,192.0.2.1"));
        assert_eq!(
            role.extensions,
            vec!["permit-port-forwarding", "permit-pty"]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
