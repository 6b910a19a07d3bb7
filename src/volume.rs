//! Volumes a task mounts: named Docker volumes (created on the worker when missing and kept
//! after the task) and host paths, which a worker mounts only under the prefixes it allows
//! (`cube worker --allow-host-path /srv/data`; none by default). Pure: the model, parsing and
//! the checks.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

/// Longest volume name.
pub const MAX_VOLUME_NAME: usize = 128;

/// One mount of a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Volume {
    /// A volume name (`data`), or an absolute host path (`/srv/data/web`).
    pub source: String,
    /// Where it is mounted in the container, an absolute path.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl Volume {
    /// A host path rather than a named volume.
    pub fn is_host_path(&self) -> bool {
        self.source.starts_with('/')
    }

    /// The volume's name, when it is a named volume.
    pub fn name(&self) -> Option<&str> {
        (!self.is_host_path()).then_some(self.source.as_str())
    }

    /// Parse Docker's short form, `SOURCE:TARGET[:ro|:rw]`.
    pub fn parse(s: &str) -> Result<Volume, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [source, target] => (*source, *target, false),
            [source, target, "ro"] => (*source, *target, true),
            [source, target, "rw"] => (*source, *target, false),
            _ => {
                return Err(format!(
                    "{s:?} is not a volume; expected SOURCE:TARGET[:ro], e.g. \"data:/var/lib/data\" or \"/srv/data:/data:ro\""
                ));
            }
        };
        let v = Volume {
            source: source.trim().into(),
            target: target.trim().into(),
            read_only,
        };
        v.check()?;
        Ok(v)
    }

    /// Check the source and target.
    pub fn check(&self) -> Result<(), String> {
        if self.is_host_path() {
            check_absolute(&self.source, "host path")?;
        } else {
            check_name(&self.source)?;
        }
        check_absolute(&self.target, "target")?;
        if self.target == "/" {
            return Err("the target \"/\" would hide the container's whole file system; expected a directory such as \"/data\"".into());
        }
        Ok(())
    }

    /// Whether a worker that allows host paths under `allowed` may mount it.
    pub fn allowed_by(&self, allowed: &[String]) -> bool {
        !self.is_host_path() || allowed.iter().any(|p| under(&self.source, p))
    }
}

/// Docker's short form, `SOURCE:TARGET[:ro]`, as errors name a volume.
impl std::fmt::Display for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.source, self.target)?;
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

/// A named volume: letters, digits, `_`, `.`, `-`, starting with a letter or digit (Docker's
/// rule).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_VOLUME_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is neither a volume name nor an absolute host path; expected a name of letters, digits, '_', '.' and '-' (at most {MAX_VOLUME_NAME}), or a path starting with '/'"
        ))
    }
}

fn check_absolute(path: &str, what: &str) -> Result<(), String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!(
            "the {what} {path:?} is not an absolute path; expected one starting with '/'"
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "the {what} {path:?} holds \"..\"; expected a path without it"
        ));
    }
    if path.contains(',') || path.chars().any(char::is_control) {
        return Err(format!(
            "the {what} {path:?} holds a comma or a control character; expected a plain path"
        ));
    }
    Ok(())
}

/// Whether `path` is `prefix` or lies under it, component by component (so `/srv/database` is
/// not under `/srv/data`).
pub fn under(path: &str, prefix: &str) -> bool {
    Path::new(path).starts_with(Path::new(prefix))
}

/// Check an `--allow-host-path` prefix.
pub fn check_allowed_prefix(prefix: &str) -> Result<(), String> {
    check_absolute(prefix, "allowed host path")?;
    if Path::new(prefix) == Path::new("/") {
        return Err(
            "allowing \"/\" would let any task mount the whole host; name the directories tasks may use, e.g. /srv/data".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_form_parses_and_checks() {
        let v = Volume::parse("data:/var/lib/data").unwrap();
        assert_eq!(v.name(), Some("data"));
        assert!(!v.read_only);
        let h = Volume::parse("/srv/data/web:/data:ro").unwrap();
        assert!(h.is_host_path() && h.read_only);
        for bad in [
            "data",
            "data:rel",
            "da ta:/x",
            "/srv/../etc:/x",
            "data:/",
            "a:b:c:d",
            "x:/y:rx",
        ] {
            assert!(Volume::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_paths_need_an_allowed_prefix() {
        let allowed = vec!["/srv/data".to_string()];
        assert!(
            Volume::parse("/srv/data/web:/d")
                .unwrap()
                .allowed_by(&allowed)
        );
        assert!(Volume::parse("/srv/data:/d").unwrap().allowed_by(&allowed));
        assert!(
            !Volume::parse("/srv/database:/d")
                .unwrap()
                .allowed_by(&allowed)
        );
        assert!(!Volume::parse("/etc:/d").unwrap().allowed_by(&[]));
        assert!(Volume::parse("named:/d").unwrap().allowed_by(&[]));
        assert!(check_allowed_prefix("/").is_err());
        assert!(check_allowed_prefix("srv").is_err());
        assert!(check_allowed_prefix("/srv/data").is_ok());
    }
}
