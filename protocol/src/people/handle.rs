//! Handles: how people find each other, `name.NN`.
//!
//! A user picks the name; the relay assigns the two-digit number (`00`–`99`), so a popular
//! name is shared by up to a hundred people and cannot be squatted by one. Another user finds
//! a handle by exact match only (there is no search and no listing).
//!
//! # Rules for a name (what [`normalize_name`] does)
//!
//! 1. Unicode NFKC, so compatibility forms become their plain letters (fullwidth `ＡＬＩＣＥ`
//!    is `ALICE`, the ligature `ﬁ` is `fi`).
//! 2. Lowercase.
//! 3. What is left must be 3 to 24 characters from `a`–`z`, `0`–`9` and `_`, not starting
//!    or ending with `_`, and without `__`. Anything else (Cyrillic `а`, Greek `ο`, accents,
//!    spaces, emoji, invisible characters) is refused with the character named: refusing
//!    non-ASCII letters is what keeps Unicode look-alikes (the confusables of UTS #39) out
//!    of handles altogether.
//!
//! Two names that still look alike in ASCII are the **same** name: the key the relay hashes
//! ([`Handle::lookup_key`]) folds `0`→`o`, `1`→`l`, `rn`→`m` and `vv`→`w`, so `a1ice.07`
//! and `alice.07` are one handle (a lookup of either finds it), and `rnary` takes a number
//! of `mary`'s hundred.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Shortest name, in characters.
pub const MIN_NAME_LEN: usize = 3;
/// Longest name, in characters (all ASCII after the rules, so also bytes).
pub const MAX_NAME_LEN: usize = 24;
/// Longest text accepted as a handle or name before normalisation, in bytes.
pub const MAX_HANDLE_INPUT_LEN: usize = 128;
/// Numbers a name can take: `00` to `99`.
pub const NUMBERS: u8 = 100;

/// Why a name or handle is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// Fewer than [`MIN_NAME_LEN`] characters.
    #[error("a handle name has at least {MIN_NAME_LEN} characters")]
    TooShort,
    /// More than [`MAX_NAME_LEN`] characters (or the input is over [`MAX_HANDLE_INPUT_LEN`]).
    #[error("a handle name has at most {MAX_NAME_LEN} characters")]
    TooLong,
    /// A character outside `a`–`z`, `0`–`9` and `_` (after NFKC and lowercasing).
    #[error("a handle name may only hold letters a-z, digits and '_' (found {0:?})")]
    BadCharacter(char),
    /// `_` at the start or end, or twice in a row.
    #[error("a handle name may not start or end with '_' or hold '__'")]
    BadUnderscore,
    /// A handle is `name.NN` with two digits after the dot.
    #[error("a handle is a name, a dot and two digits, like alice.07")]
    BadNumber,
}

/// A handle: a normalised name and its number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Handle {
    name: String,
    number: u8,
}

impl Handle {
    /// A handle from a name (normalised here) and a number below [`NUMBERS`].
    pub fn new(name: &str, number: u8) -> Result<Self, HandleError> {
        if number >= NUMBERS {
            return Err(HandleError::BadNumber);
        }
        Ok(Self {
            name: normalize_name(name)?,
            number,
        })
    }

    /// The normalised name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number the relay assigned.
    pub fn number(&self) -> u8 {
        self.number
    }

    /// What a relay hashes to store and find the handle: the name folded as the module docs
    /// say, a dot, and the two digits. Two handles that look alike have the same key.
    pub fn lookup_key(&self) -> String {
        format!("{}.{:02}", fold_lookalikes(&self.name), self.number)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.name, self.number)
    }
}

impl FromStr for Handle {
    type Err = HandleError;

    /// Parses `name.NN` (the name normalised; surrounding spaces and a leading `@` ignored).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() > MAX_HANDLE_INPUT_LEN {
            return Err(HandleError::TooLong);
        }
        let text = text.trim();
        let text = text.strip_prefix('@').unwrap_or(text);
        let (name, digits) = text.rsplit_once('.').ok_or(HandleError::BadNumber)?;
        if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HandleError::BadNumber);
        }
        let number = digits.parse().map_err(|_| HandleError::BadNumber)?;
        Self::new(name, number)
    }
}

/// Applies the rules of the module docs to a chosen name: NFKC, lowercase, then the
/// character rules. Returns the name as it is stored and shown.
pub fn normalize_name(name: &str) -> Result<String, HandleError> {
    if name.len() > MAX_HANDLE_INPUT_LEN {
        return Err(HandleError::TooLong);
    }
    let normalized: String = name.trim().nfkc().collect::<String>().to_lowercase();
    if let Some(bad) = normalized
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(HandleError::BadCharacter(bad));
    }
    let length = normalized.len();
    if length < MIN_NAME_LEN {
        return Err(HandleError::TooShort);
    }
    if length > MAX_NAME_LEN {
        return Err(HandleError::TooLong);
    }
    if normalized.starts_with('_') || normalized.ends_with('_') || normalized.contains("__") {
        return Err(HandleError::BadUnderscore);
    }
    Ok(normalized)
}

/// Folds the ASCII look-alikes of the module docs (on a normalised name).
fn fold_lookalikes(name: &str) -> String {
    name.replace('0', "o")
        .replace('1', "l")
        .replace("rn", "m")
        .replace("vv", "w")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(text: &str) -> Result<Handle, HandleError> {
        text.parse()
    }

    #[test]
    fn names_are_nfkc_then_lowercase_then_ascii() {
        assert_eq!(normalize_name("Alice").unwrap(), "alice");
        assert_eq!(normalize_name("  bob_99 ").unwrap(), "bob_99");
        // Fullwidth letters and ligatures are their plain forms.
        assert_eq!(normalize_name("ＡＬＩＣＥ").unwrap(), "alice");
        assert_eq!(normalize_name("ﬁona").unwrap(), "fiona");
        // Look-alikes from other scripts are refused, naming the character.
        assert_eq!(normalize_name("аlice"), Err(HandleError::BadCharacter('а')));
        assert_eq!(normalize_name("bοb"), Err(HandleError::BadCharacter('ο')));
        assert_eq!(normalize_name("zoë"), Err(HandleError::BadCharacter('ë')));
        assert_eq!(
            normalize_name("al\u{200b}ice"),
            Err(HandleError::BadCharacter('\u{200b}'))
        );
        assert_eq!(normalize_name("a b c"), Err(HandleError::BadCharacter(' ')));
        assert_eq!(normalize_name("a.b.c"), Err(HandleError::BadCharacter('.')));
    }

    #[test]
    fn lengths_and_underscores() {
        assert_eq!(normalize_name("ab"), Err(HandleError::TooShort));
        assert_eq!(normalize_name("abc").unwrap(), "abc");
        assert_eq!(normalize_name(&"a".repeat(24)).unwrap().len(), 24);
        assert_eq!(normalize_name(&"a".repeat(25)), Err(HandleError::TooLong));
        assert_eq!(normalize_name(&"a".repeat(500)), Err(HandleError::TooLong));
        assert_eq!(normalize_name("_abc"), Err(HandleError::BadUnderscore));
        assert_eq!(normalize_name("abc_"), Err(HandleError::BadUnderscore));
        assert_eq!(normalize_name("a__bc"), Err(HandleError::BadUnderscore));
        assert_eq!(normalize_name("a_b_c").unwrap(), "a_b_c");
    }

    #[test]
    fn handles_parse_and_print_with_two_digits() {
        let alice = handle("Alice.07").unwrap();
        assert_eq!((alice.name(), alice.number()), ("alice", 7));
        assert_eq!(alice.to_string(), "alice.07");
        assert_eq!(handle("@alice.07").unwrap(), alice);
        assert_eq!(handle("alice.7"), Err(HandleError::BadNumber));
        assert_eq!(handle("alice.007"), Err(HandleError::BadNumber));
        assert_eq!(handle("alice"), Err(HandleError::BadNumber));
        assert_eq!(handle("alice.+7"), Err(HandleError::BadNumber));
        assert_eq!(handle("alice.٠٧"), Err(HandleError::BadNumber));
        assert_eq!(Handle::new("alice", 100), Err(HandleError::BadNumber));
        assert_eq!(Handle::new("alice", 99).unwrap().to_string(), "alice.99");
    }

    #[test]
    fn look_alikes_share_one_lookup_key() {
        let key = |text: &str| handle(text).unwrap().lookup_key();
        assert_eq!(key("alice.07"), "alice.07");
        assert_eq!(key("a1ice.07"), key("alice.07"));
        assert_eq!(key("al1ce.07"), key("allce.07"));
        assert_eq!(key("b0b.01"), key("bob.01"));
        assert_eq!(key("rnary.02"), key("mary.02"));
        assert_eq!(key("vvill.03"), key("will.03"));
        assert_eq!(key("ＡＬＩＣＥ.07"), key("alice.07"));
        // Different numbers, different handles.
        assert_ne!(key("alice.07"), key("alice.08"));
        // Different names stay different.
        assert_ne!(key("alice.07"), key("alicia.07"));
    }
}
