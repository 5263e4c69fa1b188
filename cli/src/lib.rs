//! What the fib-rpc command-line tools share: exit codes a script can branch on, one JSON line
//! encoder, the parsing of seconds and headers, fib-client's progress display, fib-bench's CPU
//! figures, and shell completions and man pages from the clap
//! definitions. The tools themselves are the binaries of this package.

pub mod cpu;
pub mod docs;
pub mod exit;
pub mod operations;
pub mod progress;

/// One JSON object per line, from `(key, value)` pairs in order.
pub fn json_line(fields: &[(&str, serde_json::Value)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// A clap value parser for a positive, finite number of seconds (at most about 31 years).
pub fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 && value < 1e9 => Ok(value),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

/// A clap value parser for a `name=value` header of a request.
pub fn header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not a header: expected name=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_lines_escape_whatever_they_carry() {
        let line = json_line(&[("input", json!("a\"b\n")), ("value", json!("55"))]);
        assert_eq!(line, r#"{"input":"a\"b\n","value":"55"}"#);
    }

    #[test]
    fn headers_are_a_name_and_a_value() {
        assert_eq!(header("tenant=acme"), Ok(("tenant".into(), "acme".into())));
        assert_eq!(header("empty="), Ok(("empty".into(), String::new())));
        assert_eq!(header("a=b=c"), Ok(("a".into(), "b=c".into())));
        for bad in ["tenant", "=acme", ""] {
            assert!(header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_are_positive_and_finite() {
        assert_eq!(seconds("0.5"), Ok(0.5));
        for bad in ["0", "-1", "nan", "inf", "1e10", "soon"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
