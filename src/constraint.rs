//! Placement constraints on node labels: `zone==a`, `zone!=b`, as tasks and service templates
//! carry them (Swarm's `--constraint node.labels.zone==a`, Nomad's `constraint` blocks,
//! Kubernetes' nodeSelector). Pure: parsing, matching, and the names a reason quotes.
//!
//! A node's labels are what its worker reports (`cube worker --label zone=a`) overlaid with
//! what the manager stores for it (`cube node label`), which win on the same key. The key
//! [`NODE_KEY`] always matches the node's own name, so `node==w2` pins a task to `w2`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The key every node answers with its own name.
pub const NODE_KEY: &str = "node";
/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 128;

/// How a constraint compares a label with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// The node has the label, with this value.
    Eq,
    /// The node lacks the label, or has another value.
    Ne,
}

/// One placement constraint, written `key==value` or `key!=value`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Constraint {
    pub key: String,
    pub op: Op,
    pub value: String,
}

impl Constraint {
    /// Whether a node called `node` with these labels satisfies it.
    pub fn matches(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        let have = if self.key == NODE_KEY {
            Some(node)
        } else {
            labels.get(&self.key).map(String::as_str)
        };
        match self.op {
            Op::Eq => have == Some(self.value.as_str()),
            Op::Ne => have != Some(self.value.as_str()),
        }
    }

    /// A constraint that pins to one node.
    pub fn node(name: &str) -> Constraint {
        Constraint {
            key: NODE_KEY.into(),
            op: Op::Eq,
            value: name.into(),
        }
    }
}

/// Whether a node satisfies every constraint.
pub fn satisfies(
    constraints: &[Constraint],
    node: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    constraints.iter().all(|c| c.matches(node, labels))
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Eq => "==",
            Op::Ne => "!=",
        };
        write!(f, "{}{op}{}", self.key, self.value)
    }
}

impl std::str::FromStr for Constraint {
    type Err = String;

    fn from_str(s: &str) -> Result<Constraint, String> {
        let expected = "expected KEY==VALUE or KEY!=VALUE on a node label, e.g. \"zone==a\"";
        let (key, op, value) = if let Some((k, v)) = s.split_once("==") {
            (k, Op::Eq, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, Op::Ne, v)
        } else {
            return Err(format!("{s:?} is not a constraint; {expected}"));
        };
        let key = key.trim();
        let value = value.trim();
        check_label_key(key).map_err(|why| format!("{s:?}: {why}; {expected}"))?;
        check_label_value(value).map_err(|why| format!("{s:?}: {why}; {expected}"))?;
        Ok(Constraint {
            key: key.into(),
            op,
            value: value.into(),
        })
    }
}

/// A label key: letters, digits, `.`, `_`, `-` and `/`, starting with a letter or digit.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the label key is empty".into());
    }
    if key.len() > MAX_LABEL_LEN {
        return Err(format!(
            "the label key is {} characters long; at most {MAX_LABEL_LEN}",
            key.len()
        ));
    }
    let first_ok = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Err(format!(
            "the label key {key:?} may hold only letters, digits, '.', '_', '-' and '/', and starts with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: printable, no spaces, at most [`MAX_LABEL_LEN`] characters (may be empty).
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL_LEN {
        return Err(format!(
            "the label value is {} characters long; at most {MAX_LABEL_LEN}",
            value.len()
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the label value {value:?} may not hold spaces or control characters"
        ));
    }
    Ok(())
}

/// Parse `key=value` as `--label` gives it.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!(
            "{s:?} is not a label; expected KEY=VALUE, e.g. zone=a"
        ));
    };
    let (k, v) = (k.trim(), v.trim());
    check_label_key(k).map_err(|why| format!("{s:?}: {why}"))?;
    check_label_value(v).map_err(|why| format!("{s:?}: {why}"))?;
    if k == NODE_KEY {
        return Err(format!(
            "{s:?}: the label {NODE_KEY:?} is reserved: it always holds the node's own name"
        ));
    }
    Ok((k.into(), v.into()))
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Constraint, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn constraints_parse_match_and_print_back() {
        let eq: Constraint = "zone==a".parse().unwrap();
        let ne: Constraint = " disk != ssd ".parse().unwrap();
        assert_eq!(eq.to_string(), "zone==a");
        assert_eq!(ne.to_string(), "disk!=ssd");
        let l = labels(&[("zone", "a"), ("disk", "hdd")]);
        assert!(eq.matches("w1", &l));
        assert!(ne.matches("w1", &l));
        assert!(!eq.matches("w1", &labels(&[("zone", "b")])));
        assert!(!eq.matches("w1", &labels(&[])));
        assert!(ne.matches("w1", &labels(&[])));
        assert!(Constraint::node("w2").matches("w2", &l));
        assert!(!Constraint::node("w2").matches("w1", &l));
        assert!(satisfies(&[eq.clone(), ne.clone()], "w1", &l));
        assert!(satisfies(&[], "w1", &l));
    }

    #[test]
    fn bad_constraints_say_what_is_expected() {
        for bad in ["zone=a", "==a", "zo ne==a", "-x==a", "zone==a b"] {
            let err = bad.parse::<Constraint>().unwrap_err();
            assert!(err.contains("expected KEY==VALUE"), "{bad}: {err}");
        }
        assert!(parse_label("zone").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_label("node=x").unwrap_err().contains("reserved"));
        assert_eq!(parse_label("zone=a").unwrap(), ("zone".into(), "a".into()));
    }

    #[test]
    fn constraints_are_strings_in_json() {
        let c: Vec<Constraint> = serde_json::from_str(r#"["zone==a"]"#).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"["zone==a"]"#);
        assert!(serde_json::from_str::<Vec<Constraint>>(r#"["zone"]"#).is_err());
    }
}
