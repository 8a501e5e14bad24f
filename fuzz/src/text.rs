//! Fuzz input as text and YAML, with the limits every target shares.

/// Largest input parsed as YAML: larger documents only make each run
/// slower, not the parsers' paths different.
pub const MAX_YAML: usize = 64 * 1024;

/// The input as a YAML value, as the agent reads a configuration file or
/// an API object; `None` when it is not UTF-8, too large, or not YAML.
#[must_use]
pub fn yaml(data: &[u8]) -> Option<serde_yaml::Value> {
    if data.len() > MAX_YAML {
        return None;
    }
    serde_yaml::from_str(std::str::from_utf8(data).ok()?).ok()
}

/// `value` written out as YAML and read back: what another component sees
/// of an object this one serialised (a configuration file written by a
/// tool, `ambit ... -o yaml`). `None` when `serde_yaml` cannot write the
/// value (a tagged mapping key) or read back what it wrote: those are
/// `serde_yaml`'s limits, not the parsers' under test, and they are skipped.
#[must_use]
pub fn yaml_round_trip(value: &serde_yaml::Value) -> Option<serde_yaml::Value> {
    let text = serde_yaml::to_string(value).ok()?;
    serde_yaml::from_str(&text).ok()
}
