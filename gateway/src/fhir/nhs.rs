//! NHS numbers: parsing, the modulus-11 check digit, and a `Debug` that never prints the number.
//!
//! The number is patient data. `Display` gives the digits (needed for FHIR and the audit store);
//! `Debug` is redacted so that a stray `{:?}` in a log line cannot leak it.

use std::fmt;

/// The FHIR identifier system for NHS numbers in England.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// A ten-digit NHS number whose check digit has been verified.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber(String);

/// Why a string is not an NHS number. The messages never echo the input back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error("an NHS number has exactly 10 digits")]
    Length,
    #[error("an NHS number has only the digits 0-9")]
    NotDigits,
    #[error("the NHS number's check digit is wrong (modulus 11)")]
    CheckDigit,
}

impl NhsNumber {
    /// Parses ten digits, allowing the spaces of the printed form (`943 476 5919`).
    pub fn parse(input: &str) -> Result<Self, NhsNumberError> {
        let digits: String = input.chars().filter(|c| *c != ' ').collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(NhsNumberError::NotDigits);
        }
        if digits.len() != 10 {
            return Err(NhsNumberError::Length);
        }
        let bytes: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect();
        match check_digit(&bytes[..9]) {
            Some(d) if d == bytes[9] => Ok(NhsNumber(digits)),
            _ => Err(NhsNumberError::CheckDigit),
        }
    }

    /// Completes nine digits with their check digit, or `None` when the digits have none
    /// (remainder 1 gives 10, which is never issued).
    pub fn from_nine_digits(first_nine: u64) -> Option<Self> {
        if first_nine >= 1_000_000_000 {
            return None;
        }
        let s = format!("{first_nine:09}");
        let digits: Vec<u32> = s.bytes().map(|b| u32::from(b - b'0')).collect();
        check_digit(&digits).map(|d| NhsNumber(format!("{s}{d}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Modulus 11 over the first nine digits, weights 10 down to 2.
fn check_digit(first_nine: &[u32]) -> Option<u32> {
    let sum: u32 = first_nine
        .iter()
        .zip((2..=10).rev())
        .map(|(d, w)| d * w)
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        d => Some(d),
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NhsNumber(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_published_test_numbers() {
        // Numbers published for testing by NHS Digital.
        for n in ["9000000009", "9434765919", "9999999999", "943 476 5919"] {
            assert!(NhsNumber::parse(n).is_ok(), "{n} should be valid");
        }
    }

    #[test]
    fn rejects_a_wrong_check_digit() {
        assert_eq!(
            NhsNumber::parse("9000000008"),
            Err(NhsNumberError::CheckDigit)
        );
        assert_eq!(
            NhsNumber::parse("9434765918"),
            Err(NhsNumberError::CheckDigit)
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(NhsNumber::parse("900000000"), Err(NhsNumberError::Length));
        assert_eq!(NhsNumber::parse("90000000091"), Err(NhsNumberError::Length));
        assert_eq!(
            NhsNumber::parse("90000000O9"),
            Err(NhsNumberError::NotDigits)
        );
        assert_eq!(NhsNumber::parse(""), Err(NhsNumberError::Length));
    }

    #[test]
    fn remainder_ten_is_never_a_number() {
        // 1,2,3,4,5,6,7,8,9 weighted sum 210 % 11 = 1 -> check 10 -> invalid.
        assert!(NhsNumber::from_nine_digits(123_456_789).is_none());
        assert_eq!(
            NhsNumber::from_nine_digits(900_000_000).unwrap().as_str(),
            "9000000009"
        );
    }

    #[test]
    fn debug_never_shows_the_digits() {
        let n = NhsNumber::parse("9434765919").unwrap();
        assert!(!format!("{n:?}").contains("9434765919"));
        assert_eq!(n.to_string(), "9434765919");
    }
}
