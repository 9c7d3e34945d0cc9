//! Machine config patches on `serde_json::Value`: RFC 6902 JSON Patch, addressed by RFC
//! 6901 JSON Pointers, and RFC 7386 JSON Merge Patch.
//!
//! Our own implementation, kept to the letter of the RFCs, because a config patch that
//! means something slightly different here than in `talosctl` or `kubectl` would install
//! a machine with a config nobody wrote:
//! - a patch is atomic (RFC 6902 §5): on any error the document is left unchanged;
//! - unknown members of an operation are ignored (§4), duplicated members are an error
//!   (§4 "exactly one", Appendix A.13), which only [`Patch::from_str`] can see: a parsed
//!   `Value` has already dropped them;
//! - `test` compares by JSON value, numbers numerically (§4.6): `1` equals `1.0`;
//! - array indexes are `0` or digits without a leading zero; `-` is the element after
//!   the last, which only `add` may target (RFC 6901 §4).
use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};

/// A parsed RFC 6901 JSON Pointer: its unescaped reference tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Pointer(Vec<String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("invalid JSON pointer {0:?}: it must be empty or start with \"/\"")]
    NoLeadingSlash(String),
    #[error("invalid JSON pointer {0:?}: \"~\" must be followed by \"0\" or \"1\"")]
    BadEscape(String),
}

impl Pointer {
    /// The pointer to the whole document, `""`.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn from_tokens<I: IntoIterator<Item = S>, S: Into<String>>(tokens: I) -> Self {
        Self(tokens.into_iter().map(Into::into).collect())
    }

    pub fn tokens(&self) -> &[String] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The value this pointer references in `doc` (RFC 6901 §4), if there is one.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        resolve(doc, &self.0).ok()
    }

    /// Compares tokens, not text: `/a` is a prefix of `/a/b` but not of `/ab`.
    fn is_proper_prefix_of(&self, other: &Pointer) -> bool {
        self.0.len() < other.0.len() && other.0.starts_with(&self.0)
    }
}

impl FromStr for Pointer {
    type Err = PointerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(Self::root());
        }
        let rest = s
            .strip_prefix('/')
            .ok_or_else(|| PointerError::NoLeadingSlash(s.to_string()))?;
        rest.split('/')
            .map(|token| unescape(token).ok_or_else(|| PointerError::BadEscape(s.to_string())))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// Decoding left to right turns `~01` into `~1`, never into `/` (RFC 6901 §4).
fn unescape(token: &str) -> Option<String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        match c {
            '~' => match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// Renders tokens as a pointer, escaping `~` before `/` so that it parses back the same.
fn render(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(&self.0))
    }
}

impl Serialize for Pointer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pointer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// The six RFC 6902 operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Operation {
    Add { path: Pointer, value: Value },
    Remove { path: Pointer },
    Replace { path: Pointer, value: Value },
    Move { from: Pointer, path: Pointer },
    Copy { from: Pointer, path: Pointer },
    Test { path: Pointer, value: Value },
}

/// An operation's name, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpName {
    Add,
    Remove,
    Replace,
    Move,
    Copy,
    Test,
}

impl OpName {
    pub fn as_str(self) -> &'static str {
        match self {
            OpName::Add => "add",
            OpName::Remove => "remove",
            OpName::Replace => "replace",
            OpName::Move => "move",
            OpName::Copy => "copy",
            OpName::Test => "test",
        }
    }
}

impl fmt::Display for OpName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Operation {
    pub fn name(&self) -> OpName {
        match self {
            Operation::Add { .. } => OpName::Add,
            Operation::Remove { .. } => OpName::Remove,
            Operation::Replace { .. } => OpName::Replace,
            Operation::Move { .. } => OpName::Move,
            Operation::Copy { .. } => OpName::Copy,
            Operation::Test { .. } => OpName::Test,
        }
    }

    /// The target location.
    pub fn path(&self) -> &Pointer {
        match self {
            Operation::Add { path, .. }
            | Operation::Remove { path }
            | Operation::Replace { path, .. }
            | Operation::Move { path, .. }
            | Operation::Copy { path, .. }
            | Operation::Test { path, .. } => path,
        }
    }

    fn apply(&self, doc: &mut Value) -> Result<(), Failure> {
        match self {
            Operation::Add { path, value } => add(doc, path.tokens(), value.clone()),
            Operation::Remove { path } => remove(doc, path.tokens()).map(drop),
            // Same as remove + add at the same location (§4.3), without moving array
            // elements twice; like remove, it needs the target to exist.
            Operation::Replace { path, value } => {
                *resolve_mut(doc, path.tokens())? = value.clone();
                Ok(())
            }
            Operation::Move { from, path } => {
                if from == path {
                    // Nothing moves, but "from" must still exist (§4.4).
                    return resolve(doc, from.tokens()).map(drop);
                }
                if from.is_proper_prefix_of(path) {
                    return Err(Failure::MoveIntoChild {
                        from: from.to_string(),
                    });
                }
                let value = remove(doc, from.tokens())?;
                add(doc, path.tokens(), value)
            }
            Operation::Copy { from, path } => {
                let value = resolve(doc, from.tokens())?.clone();
                add(doc, path.tokens(), value)
            }
            Operation::Test { path, value } => {
                if json_eq(resolve(doc, path.tokens())?, value) {
                    Ok(())
                } else {
                    Err(Failure::TestFailed)
                }
            }
        }
    }
}

/// An RFC 6902 JSON Patch document: operations applied in order, all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Patch(pub Vec<Operation>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed.
    #[error("invalid JSON patch: {0}")]
    Invalid(String),
    /// Operation `index` (from 0) could not be applied; nothing was changed.
    #[error("JSON patch operation {index} ({op} {path:?}): {failure}")]
    Failed {
        index: usize,
        op: OpName,
        path: String,
        failure: Failure,
    },
}

/// Why one operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{location:?} does not exist")]
    NotFound { location: String },
    #[error("{location:?} is {kind}, not an object or array")]
    NotContainer {
        location: String,
        kind: &'static str,
    },
    #[error("{token:?} is not an index of the array at {location:?}")]
    BadIndex { location: String, token: String },
    #[error("index {index} is out of bounds of the array at {location:?} (length {len})")]
    OutOfBounds {
        location: String,
        index: String,
        len: usize,
    },
    #[error("the value differs from the tested value")]
    TestFailed,
    #[error("cannot move {from:?} into its own child")]
    MoveIntoChild { from: String },
    #[error("cannot remove the whole document")]
    RemoveRoot,
}

impl Patch {
    /// Applies every operation to `doc`, or none: on error `doc` is unchanged.
    pub fn apply(&self, doc: &mut Value) -> Result<(), PatchError> {
        // Working on a copy makes atomicity trivially true; config documents are small.
        let mut work = doc.clone();
        for (index, op) in self.0.iter().enumerate() {
            op.apply(&mut work).map_err(|failure| PatchError::Failed {
                index,
                op: op.name(),
                path: op.path().to_string(),
                failure,
            })?;
        }
        *doc = work;
        Ok(())
    }
}

/// Parses a patch from JSON text, the only place duplicated members can still be seen.
impl FromStr for Patch {
    type Err = PatchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(s).map_err(|e| PatchError::Invalid(e.to_string()))
    }
}

impl<'de> Deserialize<'de> for Patch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(PatchVisitor)
    }
}

struct PatchVisitor;

impl<'de> Visitor<'de> for PatchVisitor {
    type Value = Patch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON patch: an array of operation objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Patch, A::Error> {
        let mut ops = Vec::new();
        while let Some(op) = seq.next_element_seed(OpSeed { index: ops.len() })? {
            ops.push(op);
        }
        Ok(Patch(ops))
    }
}

/// Reads one operation object, knowing its index for error messages.
struct OpSeed {
    index: usize,
}

impl<'de> DeserializeSeed<'de> for OpSeed {
    type Value = Operation;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Operation, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OpSeed {
    type Value = Operation;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation {} as an object", self.index)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Operation, A::Error> {
        let index = self.index;
        let fail = |msg: String| de::Error::custom(format!("operation {index}: {msg}"));

        // Members are kept raw until "op" says which of them mean something: a member
        // the operation does not define is ignored whatever it holds (§4).
        let (mut op, mut path, mut from, mut value) = (None, None, None, None);
        let mut repeated: Vec<&'static str> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let (name, slot) = match key.as_str() {
                "op" => ("op", &mut op),
                "path" => ("path", &mut path),
                "from" => ("from", &mut from),
                "value" => ("value", &mut value),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.replace(map.next_value::<Value>()?).is_some() {
                repeated.push(name);
            }
        }
        let once = |name: &str, member: Option<Value>| match member {
            _ if repeated.contains(&name) => Err(fail(format!("more than one {name:?} member"))),
            None => Err(fail(format!("missing {name:?} member"))),
            Some(v) => Ok(v),
        };
        let pointer = |name: &str, member: Option<Value>| match once(name, member)? {
            Value::String(s) => s.parse::<Pointer>().map_err(|e| fail(e.to_string())),
            _ => Err(fail(format!("{name:?} must be a string"))),
        };

        let op = match once("op", op)? {
            Value::String(op) => op,
            _ => return Err(fail("\"op\" must be a string".to_string())),
        };
        let path = pointer("path", path)?;
        Ok(match op.as_str() {
            "add" => Operation::Add {
                path,
                value: once("value", value)?,
            },
            "remove" => Operation::Remove { path },
            "replace" => Operation::Replace {
                path,
                value: once("value", value)?,
            },
            "move" => Operation::Move {
                from: pointer("from", from)?,
                path,
            },
            "copy" => Operation::Copy {
                from: pointer("from", from)?,
                path,
            },
            "test" => Operation::Test {
                path,
                value: once("value", value)?,
            },
            other => return Err(fail(format!("unknown op {other:?}"))),
        })
    }
}

/// Walks `tokens` from `doc` (RFC 6901 §4), naming the first location that fails.
fn resolve<'a>(doc: &'a Value, tokens: &[String]) -> Result<&'a Value, Failure> {
    let mut cur = doc;
    for (depth, token) in tokens.iter().enumerate() {
        cur = match cur {
            Value::Object(map) => map.get(token).ok_or_else(|| not_found(tokens, depth))?,
            Value::Array(items) => &items[element_index(items.len(), tokens, depth)?],
            other => return Err(not_container(other, tokens, depth)),
        };
    }
    Ok(cur)
}

fn resolve_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, Failure> {
    let mut cur = doc;
    for (depth, token) in tokens.iter().enumerate() {
        cur = match cur {
            Value::Object(map) => map.get_mut(token).ok_or_else(|| not_found(tokens, depth))?,
            Value::Array(items) => {
                let i = element_index(items.len(), tokens, depth)?;
                &mut items[i]
            }
            other => return Err(not_container(other, tokens, depth)),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), Failure> {
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    let depth = parent.len();
    match resolve_mut(doc, parent)? {
        // An existing member is replaced (§4.1).
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) => {
            let i = match last.as_str() {
                "-" => items.len(),
                token => parse_index(token).ok_or_else(|| bad_index(tokens, depth))?,
            };
            // Inserting at the length appends; past it is an error (§4.1).
            if i > items.len() {
                return Err(out_of_bounds(tokens, depth, items.len()));
            }
            items.insert(i, value);
        }
        other => return Err(not_container(other, tokens, depth)),
    }
    Ok(())
}

fn remove(doc: &mut Value, tokens: &[String]) -> Result<Value, Failure> {
    let Some((last, parent)) = tokens.split_last() else {
        return Err(Failure::RemoveRoot);
    };
    let depth = parent.len();
    match resolve_mut(doc, parent)? {
        Value::Object(map) => map.remove(last).ok_or_else(|| not_found(tokens, depth)),
        Value::Array(items) => {
            let i = element_index(items.len(), tokens, depth)?;
            Ok(items.remove(i))
        }
        other => Err(not_container(other, tokens, depth)),
    }
}

/// The index of an existing element of an array of `len`: `tokens[depth]` must be a
/// valid index below `len`; `-` names the element after the last, which does not exist.
fn element_index(len: usize, tokens: &[String], depth: usize) -> Result<usize, Failure> {
    let token = &tokens[depth];
    if token == "-" {
        return Err(not_found(tokens, depth));
    }
    let i = parse_index(token).ok_or_else(|| bad_index(tokens, depth))?;
    if i >= len {
        return Err(out_of_bounds(tokens, depth, len));
    }
    Ok(i)
}

/// RFC 6901: `array-index = %x30 / ( %x31-39 *%x30-39 )`: no sign, no leading zero.
/// An index too large for `usize` saturates, which is out of bounds of any array.
fn parse_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    let valid = digits && (token == "0" || !token.starts_with('0'));
    valid.then(|| token.parse().unwrap_or(usize::MAX))
}

fn not_found(tokens: &[String], depth: usize) -> Failure {
    Failure::NotFound {
        location: render(&tokens[..=depth]),
    }
}

fn bad_index(tokens: &[String], depth: usize) -> Failure {
    Failure::BadIndex {
        location: render(&tokens[..depth]),
        token: tokens[depth].clone(),
    }
}

fn out_of_bounds(tokens: &[String], depth: usize, len: usize) -> Failure {
    Failure::OutOfBounds {
        location: render(&tokens[..depth]),
        index: tokens[depth].clone(),
        len,
    }
}

fn not_container(value: &Value, tokens: &[String], depth: usize) -> Failure {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    Failure::NotContainer {
        location: render(&tokens[..depth]),
        kind,
    }
}

/// JSON equality as RFC 6902 §4.6 defines it: same type, numbers equal by value, arrays
/// element by element, objects member by member whatever their order.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_eq(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        // Strings, booleans and null; values of different types are never equal.
        _ => a == b,
    }
}

/// serde_json keeps `1` and `1.0` as different numbers; the RFC wants them equal. Integers
/// compare exactly, so 2^53 + 1 does not equal the float 2^53.
fn number_eq(x: &Number, y: &Number) -> bool {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(x), int(y)) {
        (Some(i), Some(j)) => i == j,
        (Some(i), None) => float_eq_int(y, i),
        (None, Some(j)) => float_eq_int(x, j),
        (None, None) => x.as_f64() == y.as_f64(),
    }
}

fn float_eq_int(f: &Number, i: i128) -> bool {
    // A float with no fraction converts to i128 exactly within i64/u64 range; larger ones
    // saturate and cannot equal an i64/u64.
    f.as_f64()
        .is_some_and(|f| f.fract() == 0.0 && f as i128 == i)
}

/// Applies an RFC 7386 JSON Merge Patch: objects merge member by member, recursively;
/// a null member deletes; anything else, arrays included, replaces the target whole.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("the target was just made an object");
    };
    for (name, value) in members {
        if value.is_null() {
            target.remove(name);
        } else {
            // A new member starts as null, so that nulls nested in it are removed too.
            merge_patch(target.entry(name.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The member that carries a strategic merge directive (Kubernetes' spelling).
pub const DIRECTIVE: &str = "$patch";

/// Why a strategic merge patch could not be applied; `location` is a JSON pointer into
/// the patch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {location:?}: {why}")]
pub struct MergeError {
    pub location: String,
    pub why: String,
}

/// Applies a strategic merge patch the way Talos merges machine config patches, all or
/// nothing (on error `target` is unchanged):
/// - objects merge member by member, recursively; a member the target lacks is added;
/// - arrays are appended to the target's array (Talos: `certSANs`, `nameservers` grow);
/// - scalars, and values of another type than the target's, replace it;
/// - an explicit `null` member deletes that member, as in RFC 7386;
/// - directives, as in Kubernetes: a member `{"$patch": "delete"}` deletes that member,
///   an object with `"$patch": "replace"` replaces the target object with its other
///   members instead of merging, and an element `{"$patch": "replace"}` in an array
///   makes the array's other elements replace the target array instead of being
///   appended. Any other `$patch` value is an error.
///
/// What is added never carries a `null` member or a directive: added objects are merged
/// into nothing, so their nulls and directives are applied too. Unlike Talos, list
/// elements are never merged by a key (a network interface by its name): use a JSON
/// Patch or `$patch: replace` for that.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), MergeError> {
    let mut work = target.clone();
    strategic(&mut work, patch, &mut Vec::new())?;
    *target = work;
    Ok(())
}

fn strategic(target: &mut Value, patch: &Value, at: &mut Vec<String>) -> Result<(), MergeError> {
    let fail = |at: &[String], why: String| MergeError {
        location: render(at),
        why,
    };
    match patch {
        Value::Object(members) => {
            let replace = match members.get(DIRECTIVE) {
                None => false,
                Some(Value::String(d)) if d == "replace" => true,
                Some(Value::String(d)) if d == "delete" => {
                    return Err(fail(
                        at,
                        "\"$patch\": \"delete\" deletes the member that holds it, so it cannot stand at the top of a patch or in a list".into(),
                    ))
                }
                Some(other) => {
                    return Err(fail(
                        at,
                        format!("unknown \"$patch\" directive {other}; expected \"delete\" or \"replace\""),
                    ))
                }
            };
            if replace || !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Value::Object(target) = target else {
                unreachable!("the target was just made an object");
            };
            for (name, value) in members {
                if name == DIRECTIVE {
                    continue;
                }
                at.push(name.clone());
                if value.is_null() {
                    target.remove(name);
                } else if is_delete(value) {
                    if value.as_object().is_some_and(|m| m.len() > 1) {
                        return Err(fail(
                            at,
                            "\"$patch\": \"delete\" takes no other members".into(),
                        ));
                    }
                    target.remove(name);
                } else {
                    strategic(target.entry(name.clone()).or_insert(Value::Null), value, at)?;
                }
                at.pop();
            }
            Ok(())
        }
        Value::Array(elements) => {
            let is_marker = |v: &Value| {
                v.as_object().is_some_and(|m| {
                    m.len() == 1 && m.get(DIRECTIVE) == Some(&Value::String("replace".into()))
                })
            };
            let replace = elements.iter().any(is_marker);
            let mut added = Vec::with_capacity(elements.len());
            for (index, element) in elements.iter().enumerate() {
                if is_marker(element) {
                    continue;
                }
                at.push(index.to_string());
                // Merged into nothing: nulls and directives inside are applied, not kept.
                let mut value = Value::Null;
                strategic(&mut value, element, at)?;
                at.pop();
                added.push(value);
            }
            match target {
                Value::Array(existing) if !replace => existing.extend(added),
                _ => *target = Value::Array(added),
            }
            Ok(())
        }
        scalar => {
            *target = scalar.clone();
            Ok(())
        }
    }
}

fn is_delete(value: &Value) -> bool {
    value.get(DIRECTIVE) == Some(&Value::String("delete".into()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    /// Parses and applies `patch` to `target`; checks that a failed patch changed nothing.
    fn run(target: &str, patch: &str) -> Result<Value, PatchError> {
        let mut d = doc(target);
        let patch: Patch = patch.parse()?;
        let before = d.clone();
        match patch.apply(&mut d) {
            Ok(()) => Ok(d),
            Err(e) => {
                assert_eq!(d, before, "a failed patch changed the document");
                Err(e)
            }
        }
    }

    fn failed(index: usize, op: OpName, path: &str, failure: Failure) -> PatchError {
        PatchError::Failed {
            index,
            op,
            path: path.to_string(),
            failure,
        }
    }

    fn not_found(location: &str) -> Failure {
        Failure::NotFound {
            location: location.to_string(),
        }
    }

    // RFC 6902 Appendix A, with its exact documents.

    #[test]
    fn a01_adding_an_object_member() {
        let got = run(
            r#"{ "foo": "bar"}"#,
            r#"[ { "op": "add", "path": "/baz", "value": "qux" } ]"#,
        );
        assert_eq!(got, Ok(doc(r#"{ "baz": "qux", "foo": "bar" }"#)));
    }

    #[test]
    fn a02_adding_an_array_element() {
        let got = run(
            r#"{ "foo": [ "bar", "baz" ] }"#,
            r#"[ { "op": "add", "path": "/foo/1", "value": "qux" } ]"#,
        );
        assert_eq!(got, Ok(doc(r#"{ "foo": [ "bar", "qux", "baz" ] }"#)));
    }

    #[test]
    fn a03_removing_an_object_member() {
        let got = run(
            r#"{ "baz": "qux", "foo": "bar" }"#,
            r#"[ { "op": "remove", "path": "/baz" } ]"#,
        );
        assert_eq!(got, Ok(doc(r#"{ "foo": "bar" }"#)));
    }

    #[test]
    fn a04_removing_an_array_element() {
        let got = run(
            r#"{ "foo": [ "bar", "qux", "baz" ] }"#,
            r#"[ { "op": "remove", "path": "/foo/1" } ]"#,
        );
        assert_eq!(got, Ok(doc(r#"{ "foo": [ "bar", "baz" ] }"#)));
    }

    #[test]
    fn a05_replacing_a_value() {
        let got = run(
            r#"{ "baz": "qux", "foo": "bar" }"#,
            r#"[ { "op": "replace", "path": "/baz", "value": "boo" } ]"#,
        );
        assert_eq!(got, Ok(doc(r#"{ "baz": "boo", "foo": "bar" }"#)));
    }

    #[test]
    fn a06_moving_a_value() {
        let got = run(
            r#"{ "foo": { "bar": "baz", "waldo": "fred" }, "qux": { "corge": "grault" } }"#,
            r#"[ { "op": "move", "from": "/foo/waldo", "path": "/qux/thud" } ]"#,
        );
        let want = r#"{ "foo": { "bar": "baz" }, "qux": { "corge": "grault", "thud": "fred" } }"#;
        assert_eq!(got, Ok(doc(want)));
    }

    #[test]
    fn a07_moving_an_array_element() {
        let got = run(
            r#"{ "foo": [ "all", "grass", "cows", "eat" ] }"#,
            r#"[ { "op": "move", "from": "/foo/1", "path": "/foo/3" } ]"#,
        );
        assert_eq!(
            got,
            Ok(doc(r#"{ "foo": [ "all", "cows", "eat", "grass" ] }"#))
        );
    }

    #[test]
    fn a08_testing_a_value_success() {
        let target = r#"{ "baz": "qux", "foo": [ "a", 2, "c" ] }"#;
        let got = run(
            target,
            r#"[
                 { "op": "test", "path": "/baz", "value": "qux" },
                 { "op": "test", "path": "/foo/1", "value": 2 }
               ]"#,
        );
        assert_eq!(got, Ok(doc(target)));
    }

    #[test]
    fn a09_testing_a_value_error() {
        let got = run(
            r#"{ "baz": "qux" }"#,
            r#"[ { "op": "test", "path": "/baz", "value": "bar" } ]"#,
        );
        assert_eq!(
            got,
            Err(failed(0, OpName::Test, "/baz", Failure::TestFailed))
        );
    }

    #[test]
    fn a10_adding_a_nested_member_object() {
        let got = run(
            r#"{ "foo": "bar" }"#,
            r#"[ { "op": "add", "path": "/child", "value": { "grandchild": { } } } ]"#,
        );
        assert_eq!(
            got,
            Ok(doc(r#"{ "foo": "bar", "child": { "grandchild": { } } }"#))
        );
    }

    #[test]
    fn a11_ignoring_unrecognized_elements() {
        let got = run(
            r#"{ "foo": "bar" }"#,
            r#"[ { "op": "add", "path": "/baz", "value": "qux", "xyz": 123 } ]"#,
        );
        assert_eq!(got, Ok(doc(r#"{ "foo": "bar", "baz": "qux" }"#)));
    }

    #[test]
    fn a12_adding_to_a_nonexistent_target() {
        let got = run(
            r#"{ "foo": "bar" }"#,
            r#"[ { "op": "add", "path": "/baz/bat", "value": "qux" } ]"#,
        );
        assert_eq!(
            got,
            Err(failed(0, OpName::Add, "/baz/bat", not_found("/baz")))
        );
    }

    #[test]
    fn a13_invalid_json_patch_document() {
        let got = run(
            r#"{ "foo": "bar" }"#,
            r#"[ { "op": "add", "path": "/baz", "value": "qux", "op": "remove" } ]"#,
        );
        let Err(PatchError::Invalid(msg)) = got else {
            panic!("want an invalid patch, got {got:?}");
        };
        assert!(
            msg.contains("operation 0: more than one \"op\" member"),
            "{msg}"
        );
    }

    #[test]
    fn a14_escape_ordering() {
        let target = r#"{ "/": 9, "~1": 10 }"#;
        let got = run(target, r#"[ {"op": "test", "path": "/~01", "value": 10} ]"#);
        assert_eq!(got, Ok(doc(target)));
    }

    #[test]
    fn a15_comparing_strings_and_numbers() {
        let got = run(
            r#"{ "/": 9, "~1": 10 }"#,
            r#"[ {"op": "test", "path": "/~01", "value": "10"} ]"#,
        );
        assert_eq!(
            got,
            Err(failed(0, OpName::Test, "/~01", Failure::TestFailed))
        );
    }

    #[test]
    fn a16_adding_an_array_value() {
        let got = run(
            r#"{ "foo": ["bar"] }"#,
            r#"[ { "op": "add", "path": "/foo/-", "value": ["abc", "def"] } ]"#,
        );
        assert_eq!(got, Ok(doc(r#"{ "foo": ["bar", ["abc", "def"]] }"#)));
    }

    // The rest of RFC 6902's text.

    #[test]
    fn a_failing_operation_undoes_the_whole_patch() {
        // §5: the replace must not survive the failing test.
        let got = run(
            r#"{ "a": { "b": { "c": "C" } } }"#,
            r#"[
                 { "op": "replace", "path": "/a/b/c", "value": 42 },
                 { "op": "test", "path": "/a/b/c", "value": "C" }
               ]"#,
        );
        assert_eq!(
            got,
            Err(failed(1, OpName::Test, "/a/b/c", Failure::TestFailed))
        );
    }

    #[test]
    fn the_section_3_example_applies_in_order() {
        let got = run(
            r#"{ "a": { "b": { "c": "foo" } } }"#,
            r#"[
                 { "op": "test", "path": "/a/b/c", "value": "foo" },
                 { "op": "remove", "path": "/a/b/c" },
                 { "op": "add", "path": "/a/b/c", "value": [ "foo", "bar" ] },
                 { "op": "replace", "path": "/a/b/c", "value": 42 },
                 { "op": "move", "from": "/a/b/c", "path": "/a/b/d" },
                 { "op": "copy", "from": "/a/b/d", "path": "/a/b/e" }
               ]"#,
        );
        assert_eq!(got, Ok(json!({ "a": { "b": { "d": 42, "e": 42 } } })));
    }

    #[test]
    fn add_needs_the_parent_to_exist() {
        // §4.1's two documents.
        let patch = r#"[ { "op": "add", "path": "/a/b", "value": 1 } ]"#;
        assert_eq!(
            run(r#"{ "a": { "foo": 1 } }"#, patch),
            Ok(json!({ "a": { "foo": 1, "b": 1 } }))
        );
        assert_eq!(
            run(r#"{ "q": { "bar": 2 } }"#, patch),
            Err(failed(0, OpName::Add, "/a/b", not_found("/a")))
        );
    }

    #[test]
    fn add_replaces_an_existing_member_and_the_root() {
        let got = run(
            r#"{"a": 1}"#,
            r#"[{"op": "add", "path": "/a", "value": 2}]"#,
        );
        assert_eq!(got, Ok(json!({"a": 2})));
        let got = run(
            r#"{"a": 1}"#,
            r#"[{"op": "add", "path": "", "value": [1]}]"#,
        );
        assert_eq!(got, Ok(json!([1])));
        let got = run(
            r#"{"a": 1}"#,
            r#"[{"op": "replace", "path": "", "value": null}]"#,
        );
        assert_eq!(got, Ok(Value::Null));
        // An empty token is a member named "", not the root.
        let got = run(r#"{"a": 1}"#, r#"[{"op": "add", "path": "/", "value": 2}]"#);
        assert_eq!(got, Ok(json!({"a": 1, "": 2})));
    }

    #[test]
    fn array_indexes_follow_rfc_6901() {
        let target = r#"{"foo": ["a", "b"]}"#;
        let add = |path: &str| {
            run(
                target,
                &format!(r#"[{{"op": "add", "path": "{path}", "value": "x"}}]"#),
            )
        };
        assert_eq!(add("/foo/2"), Ok(json!({"foo": ["a", "b", "x"]})));
        assert_eq!(add("/foo/0"), Ok(json!({"foo": ["x", "a", "b"]})));
        let bad = |token: &str| Failure::BadIndex {
            location: "/foo".into(),
            token: token.into(),
        };
        for token in ["01", "00", "-1", "+1", "1.0", " 1", "1e0", "x", ""] {
            assert_eq!(
                add(&format!("/foo/{token}")),
                Err(failed(0, OpName::Add, &format!("/foo/{token}"), bad(token))),
                "{token:?}"
            );
        }
        let oob = |index: &str| Failure::OutOfBounds {
            location: "/foo".into(),
            index: index.into(),
            len: 2,
        };
        assert_eq!(
            add("/foo/3"),
            Err(failed(0, OpName::Add, "/foo/3", oob("3")))
        );
        let huge = "99999999999999999999999";
        assert_eq!(
            add(&format!("/foo/{huge}")),
            Err(failed(0, OpName::Add, &format!("/foo/{huge}"), oob(huge)))
        );

        // Only add may name the element after the last.
        for op in [
            r#"{"op": "remove", "path": "/foo/-"}"#,
            r#"{"op": "replace", "path": "/foo/-", "value": 1}"#,
            r#"{"op": "test", "path": "/foo/-", "value": "b"}"#,
            r#"{"op": "copy", "from": "/foo/-", "path": "/bar"}"#,
        ] {
            let Err(PatchError::Failed { failure, .. }) = run(target, &format!("[{op}]")) else {
                panic!("{op} succeeded");
            };
            assert_eq!(failure, not_found("/foo/-"), "{op}");
        }
        let got = run(target, r#"[{"op": "remove", "path": "/foo/2"}]"#);
        assert_eq!(got, Err(failed(0, OpName::Remove, "/foo/2", oob("2"))));
        // On an object, digits are just a member name.
        let got = run(
            r#"{"foo": {"01": 1}}"#,
            r#"[{"op": "remove", "path": "/foo/01"}]"#,
        );
        assert_eq!(got, Ok(json!({"foo": {}})));
    }

    #[test]
    fn targets_must_exist_for_remove_replace_move_copy_and_test() {
        let target = r#"{"a": {"b": 1}, "s": "text"}"#;
        for (op, name, path, failure) in [
            (
                r#"{"op": "remove", "path": "/a/c"}"#,
                OpName::Remove,
                "/a/c",
                not_found("/a/c"),
            ),
            (
                r#"{"op": "replace", "path": "/x", "value": 1}"#,
                OpName::Replace,
                "/x",
                not_found("/x"),
            ),
            (
                r#"{"op": "move", "from": "/x/y", "path": "/z"}"#,
                OpName::Move,
                "/z",
                not_found("/x"),
            ),
            (
                r#"{"op": "copy", "from": "/a/x", "path": "/z"}"#,
                OpName::Copy,
                "/z",
                not_found("/a/x"),
            ),
            (
                r#"{"op": "test", "path": "/x", "value": null}"#,
                OpName::Test,
                "/x",
                not_found("/x"),
            ),
            (
                r#"{"op": "add", "path": "/s/x", "value": 1}"#,
                OpName::Add,
                "/s/x",
                Failure::NotContainer {
                    location: "/s".into(),
                    kind: "a string",
                },
            ),
            (
                r#"{"op": "remove", "path": ""}"#,
                OpName::Remove,
                "",
                Failure::RemoveRoot,
            ),
        ] {
            assert_eq!(
                run(target, &format!("[{op}]")),
                Err(failed(0, name, path, failure)),
                "{op}"
            );
        }
        // A move into a missing parent fails after its remove; the patch still changes nothing.
        let got = run(
            target,
            r#"[{"op": "move", "from": "/a/b", "path": "/x/y"}]"#,
        );
        assert_eq!(got, Err(failed(0, OpName::Move, "/x/y", not_found("/x"))));
    }

    #[test]
    fn move_never_goes_into_its_own_child() {
        let target = r#"{"a": {"b": {}}, "ab": 1}"#;
        let got = run(
            target,
            r#"[{"op": "move", "from": "/a", "path": "/a/b/c"}]"#,
        );
        let into = Failure::MoveIntoChild { from: "/a".into() };
        assert_eq!(got, Err(failed(0, OpName::Move, "/a/b/c", into)));
        let got = run(target, r#"[{"op": "move", "from": "", "path": "/x"}]"#);
        assert!(matches!(
            got,
            Err(PatchError::Failed {
                failure: Failure::MoveIntoChild { .. },
                ..
            })
        ));
        // A prefix of the text is not a prefix of the tokens.
        let got = run(target, r#"[{"op": "move", "from": "/a", "path": "/abc"}]"#);
        assert_eq!(got, Ok(json!({"abc": {"b": {}}, "ab": 1})));
        // Onto itself: nothing moves, but the source must exist.
        let got = run(
            target,
            r#"[{"op": "move", "from": "/a/b", "path": "/a/b"}]"#,
        );
        assert_eq!(got, Ok(doc(target)));
        let got = run(target, r#"[{"op": "move", "from": "/q", "path": "/q"}]"#);
        assert_eq!(got, Err(failed(0, OpName::Move, "/q", not_found("/q"))));
        // Moving up out of a parent is fine.
        let got = run(target, r#"[{"op": "move", "from": "/a/b", "path": "/a"}]"#);
        assert_eq!(got, Ok(json!({"a": {}, "ab": 1})));
    }

    #[test]
    fn copy_is_deep_and_independent() {
        let got = run(
            r#"{"a": {"x": [1]}}"#,
            r#"[
                 {"op": "copy", "from": "/a", "path": "/b"},
                 {"op": "add", "path": "/b/x/-", "value": 2}
               ]"#,
        );
        assert_eq!(got, Ok(json!({"a": {"x": [1]}, "b": {"x": [1, 2]}})));
    }

    #[test]
    fn test_compares_json_values_not_text() {
        let target = r#"{"n": 1, "f": 1.5, "big": 9007199254740993, "o": {"a": [1, {"b": null}], "c": "d"}}"#;
        let test = |path: &str, value: &str| {
            run(
                target,
                &format!(r#"[{{"op": "test", "path": "{path}", "value": {value}}}]"#),
            )
            .is_ok()
        };
        assert!(test("/n", "1"));
        assert!(test("/n", "1.0"));
        assert!(test("/n", "1e0"));
        assert!(test("/f", "15e-1"));
        assert!(test("/o", r#"{"c": "d", "a": [1.0, {"b": null}]}"#));
        assert!(test("", target));
        assert!(!test("/n", "2"));
        assert!(!test("/n", "true"));
        assert!(!test("/n", r#""1""#));
        assert!(!test("/big", "9007199254740992.0"));
        assert!(test("/big", "9007199254740993"));
        assert!(!test("/o", r#"{"c": "d", "a": [{"b": null}, 1]}"#));
        assert!(!test("/o", r#"{"c": "d", "a": [1, {"b": null}], "e": 1}"#));
        assert!(!test("/o/a/1/b", "false"));
        assert!(test("/o/a/1/b", "null"));
    }

    #[test]
    fn malformed_operations_are_rejected() {
        for (patch, want) in [
            (r#"{"op": "add"}"#, "a JSON patch: an array"),
            (
                r#"[{"op": "add", "path": "/a"}]"#,
                "operation 0: missing \"value\" member",
            ),
            (
                r#"[{"op": "test", "path": "/a"}]"#,
                "operation 0: missing \"value\" member",
            ),
            (r#"[{"path": "/a"}]"#, "operation 0: missing \"op\" member"),
            (
                r#"[{"op": "remove"}]"#,
                "operation 0: missing \"path\" member",
            ),
            (
                r#"[{"op": "move", "path": "/a"}]"#,
                "operation 0: missing \"from\" member",
            ),
            (
                r#"[{"op": "remove", "path": "/a"}, {"op": "delete", "path": "/a"}]"#,
                "operation 1: unknown op \"delete\"",
            ),
            (
                r#"[{"op": "ADD", "path": "/a", "value": 1}]"#,
                "unknown op \"ADD\"",
            ),
            (r#"[{"op": 1, "path": "/a"}]"#, "\"op\" must be a string"),
            (
                r#"[{"op": "remove", "path": 1}]"#,
                "\"path\" must be a string",
            ),
            (
                r#"[{"op": "remove", "path": "a"}]"#,
                "must be empty or start with \"/\"",
            ),
            (
                r#"[{"op": "remove", "path": "/a~2"}]"#,
                "\"~\" must be followed by \"0\" or \"1\"",
            ),
            (
                r#"[{"op": "remove", "path": "/a~"}]"#,
                "\"~\" must be followed by \"0\" or \"1\"",
            ),
            (
                r#"[{"op": "remove", "path": "/a", "path": "/b"}]"#,
                "more than one \"path\" member",
            ),
            (
                r#"[{"op": "add", "path": "/a", "value": 1, "value": 2}]"#,
                "more than one \"value\" member",
            ),
            (r#"["add"]"#, "operation 0 as an object"),
        ] {
            match patch.parse::<Patch>() {
                Err(PatchError::Invalid(msg)) => assert!(msg.contains(want), "{patch}: {msg}"),
                other => panic!("{patch}: {other:?}"),
            }
        }
    }

    #[test]
    fn members_an_operation_does_not_define_are_ignored() {
        // "from" means nothing to add and "value" nothing to remove, whatever they hold.
        let patch: Patch = r#"[
            {"op": "add", "path": "/a", "value": null, "from": 7, "from": "not a pointer"},
            {"op": "remove", "path": "/b", "value": 1, "value": 2}
        ]"#
        .parse()
        .unwrap();
        assert_eq!(
            patch,
            Patch(vec![
                Operation::Add {
                    path: "/a".parse().unwrap(),
                    value: Value::Null
                },
                Operation::Remove {
                    path: "/b".parse().unwrap()
                },
            ])
        );
        // A null value is a value.
        let mut d = json!({"b": 1});
        patch.apply(&mut d).unwrap();
        assert_eq!(d, json!({"a": null}));
    }

    #[test]
    fn error_messages_name_the_operation() {
        let e = run(
            r#"{"foo": "bar"}"#,
            r#"[{"op": "add", "path": "/baz/bat", "value": 1}]"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"JSON patch operation 0 (add "/baz/bat"): "/baz" does not exist"#
        );
        let e = run(
            r#"{"a": [1]}"#,
            r#"[{"op": "test", "path": "/a/0", "value": 1}, {"op": "remove", "path": "/a/5"}]"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"JSON patch operation 1 (remove "/a/5"): index 5 is out of bounds of the array at "/a" (length 1)"#
        );
    }

    #[test]
    fn pointers_follow_rfc_6901_section_5() {
        let d = json!({
            "foo": ["bar", "baz"],
            "": 0,
            "a/b": 1,
            "c%d": 2,
            "e^f": 3,
            "g|h": 4,
            "i\\j": 5,
            "k\"l": 6,
            " ": 7,
            "m~n": 8
        });
        for (pointer, want) in [
            ("", &d),
            ("/foo", &json!(["bar", "baz"])),
            ("/foo/0", &json!("bar")),
            ("/", &json!(0)),
            ("/a~1b", &json!(1)),
            ("/c%d", &json!(2)),
            ("/e^f", &json!(3)),
            ("/g|h", &json!(4)),
            ("/i\\j", &json!(5)),
            ("/k\"l", &json!(6)),
            ("/ ", &json!(7)),
            ("/m~0n", &json!(8)),
        ] {
            let p: Pointer = pointer.parse().unwrap();
            assert_eq!(p.get(&d), Some(want), "{pointer:?}");
            assert_eq!(p.to_string(), pointer, "renders back");
        }
        let p = Pointer::from_tokens(["~1", "/", "a~/b"]);
        assert_eq!(p.to_string(), "/~01/~1/a~0~1b");
        assert_eq!(p.to_string().parse::<Pointer>(), Ok(p));
        assert_eq!("/foo/-".parse::<Pointer>().unwrap().get(&d), None);
        assert!(Pointer::root().is_root());
        assert_eq!(
            "x".parse::<Pointer>(),
            Err(PointerError::NoLeadingSlash("x".into()))
        );
    }

    #[test]
    fn patches_round_trip_through_serde_and_yaml() {
        let text = r#"[
            {"op": "add", "path": "/machine/install/disk", "value": "/dev/sda"},
            {"op": "remove", "path": "/a~1b"},
            {"op": "replace", "path": "/x", "value": {"y": [1, 2]}},
            {"op": "move", "from": "/m", "path": "/n"},
            {"op": "copy", "from": "/n", "path": "/o"},
            {"op": "test", "path": "/o", "value": null}
        ]"#;
        let patch: Patch = text.parse().unwrap();
        assert_eq!(patch.0.len(), 6);
        let json = serde_json::to_value(&patch).unwrap();
        assert_eq!(json, doc(text));
        assert_eq!(serde_json::from_value::<Patch>(json).unwrap(), patch);

        // The way patches arrive inside a YAML MachineConfig.
        let yaml = "- op: add\n  path: /machine/install/disk\n  value: /dev/sda\n- op: remove\n  path: /a~1b\n";
        let from_yaml: Patch = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(from_yaml.0, patch.0[..2]);
    }

    // RFC 7386 JSON Merge Patch.

    #[test]
    fn merge_patch_appendix_a() {
        for (target, patch, want) in [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"c"}"#, r#"{"a":["b"]}"#, r#"{"a":["b"]}"#),
            (
                r#"{"a": {"b": "c"}}"#,
                r#"{"a": {"b": "d", "c": null}}"#,
                r#"{"a": {"b": "d"}}"#,
            ),
            (r#"{"a": [{"b":"c"}]}"#, r#"{"a": [1]}"#, r#"{"a": [1]}"#),
            (r#"["a","b"]"#, r#"["c","d"]"#, r#"["c","d"]"#),
            (r#"{"a":"b"}"#, r#"["c"]"#, r#"["c"]"#),
            (r#"{"a":"foo"}"#, r#"null"#, r#"null"#),
            (r#"{"a":"foo"}"#, r#""bar""#, r#""bar""#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (r#"[1,2]"#, r#"{"a":"b","c":null}"#, r#"{"a":"b"}"#),
            (
                r#"{}"#,
                r#"{"a":{"bb":{"ccc":null}}}"#,
                r#"{"a":{"bb":{}}}"#,
            ),
        ] {
            let mut d = doc(target);
            merge_patch(&mut d, &doc(patch));
            assert_eq!(d, doc(want), "MergePatch({target}, {patch})");
        }
    }

    #[test]
    fn merge_patch_section_3_example() {
        let mut d = json!({
            "title": "Goodbye!",
            "author": { "givenName": "John", "familyName": "Doe" },
            "tags": ["example", "sample"],
            "content": "This will be unchanged"
        });
        let patch = json!({
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": { "familyName": null },
            "tags": ["example"]
        });
        merge_patch(&mut d, &patch);
        assert_eq!(
            d,
            json!({
                "title": "Hello!",
                "author": { "givenName": "John" },
                "tags": ["example"],
                "content": "This will be unchanged",
                "phoneNumber": "+01-123-456-7890"
            })
        );
    }

    // Strategic merge (Talos style).

    fn merged(target: Value, patch: Value) -> Result<Value, MergeError> {
        let mut d = target;
        let before = d.clone();
        match strategic_merge(&mut d, &patch) {
            Ok(()) => Ok(d),
            Err(e) => {
                assert_eq!(d, before, "a failed merge changed the document");
                Err(e)
            }
        }
    }

    #[test]
    fn strategic_merge_merges_maps_and_appends_lists() {
        let target = json!({
            "machine": {
                "type": "worker",
                "certSANs": ["10.0.0.1"],
                "network": {"nameservers": ["1.1.1.1"]},
                "kubelet": {"extraArgs": {"a": "1"}}
            },
            "cluster": {"name": "c"}
        });
        let patch = json!({
            "machine": {
                "certSANs": ["10.0.0.2", "10.0.0.1"],
                "network": {"hostname": "n1"},
                "kubelet": {"extraArgs": {"b": "2"}},
                "install": {"wipe": true}
            }
        });
        assert_eq!(
            merged(target, patch),
            Ok(json!({
                "machine": {
                    "type": "worker",
                    "certSANs": ["10.0.0.1", "10.0.0.2", "10.0.0.1"],
                    "network": {"nameservers": ["1.1.1.1"], "hostname": "n1"},
                    "kubelet": {"extraArgs": {"a": "1", "b": "2"}},
                    "install": {"wipe": true}
                },
                "cluster": {"name": "c"}
            }))
        );
    }

    #[test]
    fn strategic_merge_scalars_and_type_changes_replace() {
        for (target, patch, want) in [
            (json!({"a": 1}), json!({"a": 2}), json!({"a": 2})),
            (
                json!({"a": "x"}),
                json!({"a": {"b": 1}}),
                json!({"a": {"b": 1}}),
            ),
            (json!({"a": {"b": 1}}), json!({"a": "x"}), json!({"a": "x"})),
            (
                json!({"a": [1]}),
                json!({"a": {"b": 1}}),
                json!({"a": {"b": 1}}),
            ),
            (json!({"a": {"b": 1}}), json!({"a": [1]}), json!({"a": [1]})),
            (json!({"a": false}), json!({"a": true}), json!({"a": true})),
            (json!({}), json!({}), json!({})),
            (json!({"a": [1]}), json!({"a": []}), json!({"a": [1]})),
            (json!(null), json!({"a": 1}), json!({"a": 1})),
            (json!([1]), json!([2]), json!([1, 2])),
            (json!({"a": 1}), json!(3), json!(3)),
        ] {
            assert_eq!(
                merged(target.clone(), patch.clone()),
                Ok(want),
                "{target} + {patch}"
            );
        }
    }

    #[test]
    fn strategic_merge_null_and_delete_remove_members() {
        let target =
            json!({"machine": {"network": {"hostname": "x", "mtu": 9000}, "type": "worker"}});
        assert_eq!(
            merged(
                target.clone(),
                json!({"machine": {"network": {"hostname": null}}})
            ),
            Ok(json!({"machine": {"network": {"mtu": 9000}, "type": "worker"}}))
        );
        assert_eq!(
            merged(
                target.clone(),
                json!({"machine": {"network": {"$patch": "delete"}}})
            ),
            Ok(json!({"machine": {"type": "worker"}}))
        );
        // Deleting what is not there is not an error.
        assert_eq!(
            merged(
                target.clone(),
                json!({"machine": {"nothing": null, "gone": {"$patch": "delete"}}})
            ),
            Ok(target.clone())
        );
        // New members never bring nulls or directives along.
        assert_eq!(
            merged(
                json!({}),
                json!({"a": {"b": null, "c": 1, "d": {"$patch": "delete"}}, "l": [{"x": null, "y": 2}]})
            ),
            Ok(json!({"a": {"c": 1}, "l": [{"y": 2}]}))
        );
        // A null element in a list is a value.
        assert_eq!(
            merged(json!({"l": [1]}), json!({"l": [null]})),
            Ok(json!({"l": [1, null]}))
        );
    }

    #[test]
    fn strategic_merge_replace_directives() {
        let target = json!({"machine": {"certSANs": ["a", "b"], "kubelet": {"extraArgs": {"a": "1"}, "image": "k"}}});
        assert_eq!(
            merged(
                target.clone(),
                json!({"machine": {"certSANs": [{"$patch": "replace"}, "c"]}})
            ),
            Ok(
                json!({"machine": {"certSANs": ["c"], "kubelet": {"extraArgs": {"a": "1"}, "image": "k"}}})
            )
        );
        assert_eq!(
            merged(
                target.clone(),
                json!({"machine": {"certSANs": [{"$patch": "replace"}]}})
            ),
            Ok(
                json!({"machine": {"certSANs": [], "kubelet": {"extraArgs": {"a": "1"}, "image": "k"}}})
            )
        );
        assert_eq!(
            merged(
                target.clone(),
                json!({"machine": {"kubelet": {"$patch": "replace", "extraArgs": {"b": "2"}}}})
            ),
            Ok(json!({"machine": {"certSANs": ["a", "b"], "kubelet": {"extraArgs": {"b": "2"}}}}))
        );
        // A whole document can be replaced.
        assert_eq!(
            merged(target, json!({"$patch": "replace", "version": "v1alpha1"})),
            Ok(json!({"version": "v1alpha1"}))
        );
    }

    #[test]
    fn strategic_merge_bad_directives_change_nothing() {
        let target = json!({"machine": {"type": "worker", "l": [1]}});
        for (patch, location, why) in [
            (
                json!({"machine": {"type": "cp", "x": {"$patch": "merge"}}}),
                "/machine/x",
                "unknown \"$patch\" directive \"merge\"",
            ),
            (
                json!({"machine": {"x": {"$patch": 1}}}),
                "/machine/x",
                "unknown \"$patch\" directive 1",
            ),
            (json!({"$patch": "delete"}), "", "cannot stand at the top"),
            (
                json!({"machine": {"l": [{"$patch": "delete"}]}}),
                "/machine/l/0",
                "cannot stand at the top of a patch or in a list",
            ),
            (
                json!({"machine": {"type": {"$patch": "delete", "x": 1}}}),
                "/machine/type",
                "takes no other members",
            ),
            (json!({"a~b/c": {"$patch": "nope"}}), "/a~0b~1c", "unknown"),
        ] {
            let e = merged(target.clone(), patch.clone()).unwrap_err();
            assert_eq!(e.location, location, "{patch}");
            assert!(e.why.contains(why), "{patch}: {e}");
        }
    }
}
