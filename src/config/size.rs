//! Byte sizes in the config: a plain integer (bytes) or a string with a unit.
//!
//! Units are binary, as RAM is sold and reported: `KB`/`KiB` = 1024,
//! `MB`/`MiB` = 1024², `GB`/`GiB` = 1024³. Fractions are allowed (`1.5GB`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A size in bytes, written as `6442450944`, `"6GB"`, `"512 MiB"` or `"1.5G"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "u64")]
pub struct ByteSize(pub u64);

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Bytes as an integer, or a number with a binary unit: 6GB, 512 MiB, 1.5G",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([KkMmGgTt](i?[Bb])?|[Bb])?\s*$" }
            ]
        })
    }
}

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl ByteSize {
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }

    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }

    /// Parses `"6GB"`, `"512 MiB"`, `"1.5G"`, `"1048576"`.
    ///
    /// # Errors
    ///
    /// A message that names the text and the accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let scale: u64 = match unit.as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "unknown size unit in {text:?} (use B, KB, MB, GB or TB)"
                ))
            }
        };
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a size (examples: 6GB, 512MB, 1048576)"))?;
        Ok(ByteSize((value * scale as f64).round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 >= 1 << 30 {
            write!(f, "{:.2} GiB", b / (1u64 << 30) as f64)
        } else if self.0 >= 1 << 20 {
            write!(f, "{:.1} MiB", b / (1u64 << 20) as f64)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Float(x) if x >= 0.0 => Ok(ByteSize(x as u64)),
            Raw::Float(x) => Err(serde::de::Error::custom(format!("negative size {x}"))),
            Raw::Text(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_fractions() {
        assert_eq!(ByteSize::parse("6GB").unwrap(), ByteSize::gib(6));
        assert_eq!(ByteSize::parse("512 MiB").unwrap(), ByteSize::mib(512));
        assert_eq!(ByteSize::parse("1.5g").unwrap(), ByteSize(3 << 29));
        assert_eq!(ByteSize::parse("1048576").unwrap(), ByteSize::mib(1));
    }

    #[test]
    fn rejects_unknown_units_with_the_text() {
        let err = ByteSize::parse("6 parsecs").unwrap_err();
        assert!(err.contains("6 parsecs"), "{err}");
        assert!(ByteSize::parse("GB").is_err());
    }

    #[test]
    fn yaml_accepts_integers_and_strings() {
        let a: ByteSize = yaml_serde::from_str("6442450944").unwrap();
        let b: ByteSize = yaml_serde::from_str("\"6GB\"").unwrap();
        let c: ByteSize = yaml_serde::from_str("6GB").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
    }
}
