//! JSON read for configuration: like `serde_json::from_str::<Value>`, except that an object
//! naming the same key twice is an error instead of "the last one wins". In a config file a
//! repeated key is a mistake whose effect is invisible: `"per_hour": 100, …, "per_hour": null`
//! would silently lift a limit. The error names the key's path (`gateways[0].rate_limits.per_hour`)
//! and serde_json adds the line and column.

use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a text is not accepted: not JSON at all, or JSON that repeats a key.
#[derive(Debug)]
pub(crate) enum StrictError {
    /// Not valid JSON (serde_json's message: what and where, never the text around it).
    Syntax(serde_json::Error),
    /// A key named twice in one object.
    Duplicate(serde_json::Error),
}

impl fmt::Display for StrictError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(e) => write!(f, "not valid JSON: {e}"),
            Self::Duplicate(e) => write!(f, "{e}"),
        }
    }
}

/// Parses `text` into a [`Value`], refusing repeated keys (module docs).
pub(crate) fn parse(text: &str) -> Result<Value, StrictError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let classify = |e: serde_json::Error| {
        if e.is_data() {
            StrictError::Duplicate(e)
        } else {
            StrictError::Syntax(e)
        }
    };
    let value = Strict("").deserialize(&mut de).map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(value)
}

/// Deserializes one value found at the given path.
struct Strict<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity; serde_json refuses out-of-range numbers before.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.0, items.len());
            match seq.next_element_seed(Strict(&path))? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.0.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.0)
            };
            if object.contains_key(&key) {
                return Err(A::Error::custom(format!(
                    "{path}: the key is given twice in the same object (only one could take \
                     effect; remove the other)"
                )));
            }
            let value = map.next_value_seed(Strict(&path))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_is_refused_with_its_path_and_line() {
        let text = "{\"gateways\": [{\"id\": \"a\",\n \"rate_limits\": {\"per_hour\": 100,\n \"per_hour\": null}}]}";
        let e = parse(text).unwrap_err().to_string();
        assert!(
            e.starts_with("gateways[0].rate_limits.per_hour: the key is given twice"),
            "{e}"
        );
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn the_same_key_in_different_objects_is_fine_and_values_match_serde_json() {
        let text = r#"{"a": {"x": 1, "y": [1.5, -2, true, null, "s", {"x": 2}]}, "b": {"x": 18446744073709551615}}"#;
        let strict = parse(text).unwrap();
        let plain: Value = serde_json::from_str(text).unwrap();
        assert_eq!(strict, plain);
    }

    #[test]
    fn syntax_errors_are_told_apart() {
        let e = parse("{\"a\": }").unwrap_err();
        assert!(matches!(e, StrictError::Syntax(_)), "{e}");
        assert!(e.to_string().starts_with("not valid JSON: "), "{e}");
        assert!(matches!(parse("{} x"), Err(StrictError::Syntax(_))));
        assert!(matches!(parse("[[[[1]]]]"), Ok(Value::Array(_))));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let text = "[".repeat(100_000);
        assert!(matches!(parse(&text), Err(StrictError::Syntax(_))));
    }
}
