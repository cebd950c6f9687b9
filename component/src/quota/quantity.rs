//! Resource quantities with upstream's arithmetic and canonical form: a sum keeps the format
//! of its first non-zero term, and `1500m`, `1536Mi`, `100M` print as upstream's
//! `resource.Quantity.String()` does. Values are held exactly in nano-units (finer precision
//! rounds up, as upstream's parse does).

use std::cmp::Ordering;
use std::fmt;

/// How a quantity was written, which decides how a sum of them prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `500m`, `2`, `1k`, `100M`
    DecimalSi,
    /// `64Mi`, `1Gi`
    BinarySi,
    /// `1e3`
    DecimalExponent,
}

/// A resource amount: `nanos` is the value times 10^9.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    pub nanos: i128,
    pub format: Format,
}

const NANO: i128 = 1_000_000_000;

impl Default for Quantity {
    fn default() -> Self {
        Quantity::ZERO
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Quantity {
    pub const ZERO: Quantity = Quantity {
        nanos: 0,
        format: Format::DecimalSi,
    };

    /// A whole number of units, written as a plain decimal (upstream's `NewQuantity(n, DecimalSI)`).
    pub fn count(n: i64) -> Quantity {
        Quantity {
            nanos: i128::from(n) * NANO,
            format: Format::DecimalSi,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Upstream's `Quantity.Add`: adding to zero takes the other's format.
    pub fn add(&mut self, other: Quantity) {
        if self.nanos == 0 {
            self.format = other.format;
        }
        self.nanos = self.nanos.saturating_add(other.nanos);
    }

    /// Parse `500m`, `1.5`, `64Mi`, `1e3`, `.5`; `None` when malformed or out of range.
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(split);
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return None;
        }
        let (format, exp10, exp1024): (Format, i32, u32) = match suffix {
            "" => (Format::DecimalSi, 0, 0),
            "n" => (Format::DecimalSi, -9, 0),
            "u" => (Format::DecimalSi, -6, 0),
            "m" => (Format::DecimalSi, -3, 0),
            "k" => (Format::DecimalSi, 3, 0),
            "M" => (Format::DecimalSi, 6, 0),
            "G" => (Format::DecimalSi, 9, 0),
            "T" => (Format::DecimalSi, 12, 0),
            "P" => (Format::DecimalSi, 15, 0),
            "E" => (Format::DecimalSi, 18, 0),
            "Ki" => (Format::BinarySi, 0, 1),
            "Mi" => (Format::BinarySi, 0, 2),
            "Gi" => (Format::BinarySi, 0, 3),
            "Ti" => (Format::BinarySi, 0, 4),
            "Pi" => (Format::BinarySi, 0, 5),
            "Ei" => (Format::BinarySi, 0, 6),
            e => {
                let digits = e.strip_prefix(['e', 'E'])?;
                let n: i32 = digits.parse().ok()?;
                if !(-40..=40).contains(&n) {
                    return None;
                }
                (Format::DecimalExponent, n, 0)
            }
        };
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return None;
        }
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        let mut value = mantissa.checked_mul(1i128.checked_shl(10 * exp1024)?)?;
        // value * 10^(9 + exp10 - frac digits), rounded up when it drops digits.
        let shift = 9 + exp10 - frac_part.len() as i32;
        if shift >= 0 {
            value = value.checked_mul(10i128.checked_pow(shift as u32)?)?;
        } else {
            let div = 10i128.checked_pow((-shift) as u32)?;
            value = value / div + i128::from(value % div != 0);
        }
        Some(Quantity {
            nanos: if negative { -value } else { value },
            format,
        })
    }
}

impl fmt::Display for Quantity {
    /// Upstream's canonical form (`CanonicalizeBytes`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let mut format = self.format;
        if format == Format::BinarySi && (self.nanos.abs() < 1024 * NANO || self.nanos % NANO != 0)
        {
            // Small or fractional binary amounts would lose precision in Ki/Mi: decimal.
            format = Format::DecimalSi;
        }
        if format == Format::BinarySi {
            let mut value = self.nanos / NANO;
            let mut exp = 0usize;
            while value % 1024 == 0 && exp < 6 {
                value /= 1024;
                exp += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][exp];
            return write!(f, "{value}{suffix}");
        }
        let mut mantissa = self.nanos;
        let mut exponent: i32 = -9;
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
        let r = exponent.rem_euclid(3);
        mantissa *= 10i128.pow(r as u32);
        exponent -= r;
        let suffix = match (format, exponent) {
            (_, 0) => String::new(),
            (Format::DecimalSi, -9) => "n".into(),
            (Format::DecimalSi, -6) => "u".into(),
            (Format::DecimalSi, -3) => "m".into(),
            (Format::DecimalSi, 3) => "k".into(),
            (Format::DecimalSi, 6) => "M".into(),
            (Format::DecimalSi, 9) => "G".into(),
            (Format::DecimalSi, 12) => "T".into(),
            (Format::DecimalSi, 15) => "P".into(),
            (Format::DecimalSi, 18) => "E".into(),
            (_, e) => format!("e{e}"),
        };
        write!(f, "{mantissa}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Quantity::parse(s).expect(s).to_string()
    }

    fn sum(items: &[&str]) -> String {
        let mut total = Quantity::ZERO;
        for s in items {
            total.add(Quantity::parse(s).expect(s));
        }
        total.to_string()
    }

    #[test]
    fn canonical_forms_match_upstream() {
        for (input, want) in [
            ("0", "0"),
            ("0m", "0"),
            ("500m", "500m"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            (".1", "100m"),
            ("2", "2"),
            ("1k", "1k"),
            ("1000", "1k"),
            ("100M", "100M"),
            ("1G", "1G"),
            ("1Gi", "1Gi"),
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("1.5Gi", "1536Mi"),
            ("512", "512"),
            ("0.5Ki", "512"),
            ("1Ki", "1Ki"),
            ("1e3", "1e3"),
            ("1E6", "1e6"),
            ("100n", "100n"),
            ("1u", "1u"),
            ("0.1n", "1n"),
            ("-500m", "-500m"),
        ] {
            assert_eq!(canon(input), want, "{input}");
        }
        for bad in ["", "abc", "1x", "1.2.3", "Mi", "1e", "--1"] {
            assert!(Quantity::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn sums_keep_the_first_terms_format() {
        assert_eq!(sum(&["500m", "500m"]), "1");
        assert_eq!(sum(&["500m", "1"]), "1500m");
        assert_eq!(sum(&["1Gi", "512Mi"]), "1536Mi");
        assert_eq!(sum(&["512Mi", "512Mi"]), "1Gi");
        // A decimal first term makes the sum decimal.
        assert_eq!(sum(&["100M", "1Gi"]), "1173741824");
        assert_eq!(sum(&["0", "1Gi"]), "1Gi");
        assert_eq!(sum(&[]), "0");
    }

    #[test]
    fn ordering_is_by_value() {
        let q = |s| Quantity::parse(s).expect(s);
        assert!(q("2") > q("1500m"));
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("1"), q("1000m"));
    }
}
