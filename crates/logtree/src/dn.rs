//! Distinguished names: the dot-delimited paths that address nodes of the log tree.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A validated dot-delimited path such as `root.role.curator`; `""` is the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dn(String);

impl Dn {
    /// Validates and wraps a DN; every component must be non-empty.
    pub fn new(dn: impl Into<String>) -> Result<Dn, Error> {
        let dn = dn.into();
        if dn.is_empty() {
            return Ok(Dn(dn));
        }
        if dn.split('.').any(str::is_empty) {
            return Err(Error::InvalidDn {
                dn,
                reason: "empty component",
            });
        }
        Ok(Dn(dn))
    }

    /// The root DN `""`, an ancestor of every other DN.
    pub fn root() -> Dn {
        Dn(String::new())
    }

    /// Whether this is the root DN.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The DN as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components of the DN (none for the root).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('.').filter(|c| !c.is_empty())
    }

    /// The DN of a direct child; `name` must be non-empty and contain no dot.
    pub fn child(&self, name: &str) -> Result<Dn, Error> {
        if name.is_empty() || name.contains('.') {
            return Err(Error::InvalidDn {
                dn: name.to_string(),
                reason: "child name must be non-empty and contain no '.'",
            });
        }
        if self.is_root() {
            Ok(Dn(name.to_string()))
        } else {
            Ok(Dn(format!("{}.{name}", self.0)))
        }
    }

    /// The parent DN, or `None` for the root.
    pub fn parent(&self) -> Option<Dn> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('.') {
            Some(i) => Dn(self.0[..i].to_string()),
            None => Dn::root(),
        })
    }

    /// Component-wise prefix test: `foo.bar` is within `foo.bar`, `foo` and `""`, but
    /// `foo.barr` is not within `foo.bar`.
    pub fn is_within(&self, ancestor: &Dn) -> bool {
        if ancestor.is_root() || self.0 == ancestor.0 {
            return true;
        }
        // A plain string prefix would wrongly put `foo.barr` under `foo.bar`; the next byte
        // must be the separator.
        self.0.starts_with(&ancestor.0) && self.0.as_bytes().get(ancestor.0.len()) == Some(&b'.')
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` rather than `write_str` so that `{:<32}` works when rendering.
        f.pad(&self.0)
    }
}

impl FromStr for Dn {
    type Err = Error;

    fn from_str(s: &str) -> Result<Dn, Error> {
        Dn::new(s)
    }
}

impl TryFrom<&str> for Dn {
    type Error = Error;

    fn try_from(s: &str) -> Result<Dn, Error> {
        Dn::new(s)
    }
}

impl TryFrom<String> for Dn {
    type Error = Error;

    fn try_from(s: String) -> Result<Dn, Error> {
        Dn::new(s)
    }
}

impl AsRef<str> for Dn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(s: &str) -> Dn {
        Dn::new(s).expect("valid dn")
    }

    #[test]
    fn validation() {
        for ok in ["", "a", "a.b", "root.role.curator", "a-b.c_d"] {
            assert!(Dn::new(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in ["a..b", ".a", "a.", ".", ".."] {
            assert!(
                matches!(Dn::new(bad), Err(Error::InvalidDn { .. })),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn subtree_rule() {
        assert!(dn("foo.bar").is_within(&dn("foo.bar")));
        assert!(dn("foo.bar").is_within(&dn("foo")));
        assert!(dn("foo.bar").is_within(&Dn::root()));
        assert!(dn("foo.bar.baz").is_within(&dn("foo.bar")));
        assert!(!dn("foo.barr").is_within(&dn("foo.bar")));
        assert!(!dn("foo").is_within(&dn("foo.bar")));
        assert!(!dn("bar").is_within(&dn("foo")));
        assert!(Dn::root().is_within(&Dn::root()));
        assert!(!Dn::root().is_within(&dn("foo")));
    }

    #[test]
    fn child_and_parent() {
        assert_eq!(Dn::root().child("root"), Ok(dn("root")));
        assert_eq!(dn("root").child("a"), Ok(dn("root.a")));
        assert!(dn("root").child("").is_err());
        assert!(dn("root").child("a.b").is_err());
        assert_eq!(dn("root.a").parent(), Some(dn("root")));
        assert_eq!(dn("root").parent(), Some(Dn::root()));
        assert_eq!(Dn::root().parent(), None);
        assert_eq!(
            dn("a.b.c").components().collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
        assert_eq!(Dn::root().components().count(), 0);
    }
}
