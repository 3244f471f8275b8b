//! A span-preserving TOML tree and typed access to it, so every error can name the file, the
//! line and the dotted key it is about.
//!
//! Must not: know the schema — the section readers in `load` do.

use super::timeouts::MAX_DURATION;
use super::*;

// ---------------------------------------------------------------------------------------------
// Span-preserving TOML tree and typed access with file:line:key errors
// ---------------------------------------------------------------------------------------------

/// Error context: the file name as given and where each line starts.
pub(super) struct Cx {
    pub(super) file: String,
    pub(super) line_starts: Vec<usize>,
    pub(super) last_line: usize,
}

impl Cx {
    pub(super) fn new(path: &Path, text: &str) -> Cx {
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Cx {
            file: path.display().to_string(),
            last_line: text.lines().count(),
            line_starts,
        }
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    pub(super) fn error(&self, line: usize, key: &str, message: &str) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    pub(super) fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = match e.span() {
            Some(span) => {
                let line = self.line_of(span.start);
                (line, span.start - self.line_starts[line - 1] + 1)
            }
            None => (0, 0),
        };
        let detail = e.message().trim().replace('\n', "; ");
        let message = if column > 0 {
            format!("invalid TOML at column {column}: {detail}")
        } else {
            format!("invalid TOML: {detail}")
        };
        self.error(line, "", &message)
    }
}

/// A TOML value with the byte span the parser reported for it, where it reported one (implicit
/// tables such as `a` in `[a.b]` have none; their entries do).
#[derive(Debug)]
pub(super) struct Node {
    pub(super) span: Option<Range<usize>>,
    pub(super) kind: Kind,
}

#[derive(Debug)]
pub(super) enum Kind {
    Str(String),
    Int(i64),
    Float,
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<(String, Node)>),
}

impl Node {
    /// The node's own line or, for an implicit table (`a` in `[a.b]`), that of its first
    /// entry: the nearest place in the file that shows the key.
    pub(super) fn line(&self, cx: &Cx) -> Option<usize> {
        if let Some(span) = &self.span {
            return Some(cx.line_of(span.start));
        }
        match &self.kind {
            Kind::Table(entries) => entries.iter().find_map(|(_, n)| n.line(cx)),
            Kind::Array(items) => items.iter().find_map(|n| n.line(cx)),
            _ => None,
        }
    }
}

impl Kind {
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Float => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Datetime => "a date-time",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
        }
    }
}

// `toml::Spanned<T>` cannot be used directly: it fails outright on tables the parser has no
// span for. Instead `Node` speaks the same private protocol as `serde_spanned` (toml 0.8 /
// serde_spanned 0.6): it asks for the magic struct, and if the deserializer answers with the
// span fields it records them; otherwise it is looking at a plain table and reads it as one.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
const DATETIME_KEY: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor)
    }
}

/// The value inside a span: asking for the magic struct again would recurse forever.
struct UnspannedNode;

impl<'de> DeserializeSeed<'de> for UnspannedNode {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

pub(super) struct NodeVisitor;

fn bare(kind: Kind) -> Node {
    Node { span: None, kind }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(bare(Kind::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(bare(Kind::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(|v| bare(Kind::Int(v)))
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(bare(Kind::Float))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(bare(Kind::Str(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(bare(Kind::Str(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(bare(Kind::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Ok(bare(Kind::Table(Vec::new())));
        };
        if first == SPANNED_START {
            let start: usize = map.next_value()?;
            let _ = map.next_key::<String>()?;
            let end: usize = map.next_value()?;
            let _ = map.next_key::<String>()?;
            let mut node = map.next_value_seed(UnspannedNode)?;
            node.span = Some(start..end);
            return Ok(node);
        }
        if first == DATETIME_KEY {
            map.next_value::<de::IgnoredAny>()?;
            return Ok(bare(Kind::Datetime));
        }
        let mut entries = vec![(first, map.next_value::<Node>()?)];
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(bare(Kind::Table(entries)))
    }
}

/// A table being read: its dotted path and the line errors fall back to when an entry has no
/// span of its own.
pub(super) struct Section<'a> {
    pub(super) cx: &'a Cx,
    pub(super) path: String,
    pub(super) line: usize,
    pub(super) entries: &'a [(String, Node)],
}

/// One value being read, with everything needed to blame it precisely.
pub(super) struct Field<'a> {
    pub(super) cx: &'a Cx,
    pub(super) path: String,
    pub(super) line: usize,
    pub(super) node: &'a Node,
}

impl<'a> Section<'a> {
    pub(super) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn field(&self, key: &str) -> Option<Field<'a>> {
        let (_, node) = self.entries.iter().find(|(k, _)| k == key)?;
        Some(Field {
            cx: self.cx,
            path: self.key(key),
            line: node.line(self.cx).unwrap_or(self.line),
            node,
        })
    }

    pub(super) fn required(&self, key: &str) -> Result<Field<'a>, ConfigError> {
        self.field(key).ok_or_else(|| {
            self.cx
                .error(self.line, &self.key(key), "required key is missing")
        })
    }

    pub(super) fn check_known(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        match self
            .entries
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            Some((key, _)) => {
                Err(self
                    .field(key)
                    .expect("key taken from the same table")
                    .err(&format!(
                        "unknown key (expected one of: {})",
                        allowed.join(", ")
                    )))
            }
            None => Ok(()),
        }
    }

    pub(super) fn usize_or(
        &self,
        key: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ConfigError> {
        match self.field(key) {
            Some(f) => f.usize_in(min, max),
            None => Ok(default),
        }
    }

    pub(super) fn duration_or(
        &self,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.field(key) {
            Some(f) => f.duration(),
            None => Ok(default),
        }
    }

    /// `[[name]]`: present, an array, not empty, every element a table.
    pub(super) fn required_array_of_tables(
        &self,
        key: &str,
    ) -> Result<Vec<Field<'a>>, ConfigError> {
        let Some(f) = self.field(key) else {
            return Err(self.cx.error(
                self.cx.last_line,
                key,
                &format!("at least one [[{key}]] entry is required"),
            ));
        };
        if let Kind::Table(_) = f.node.kind {
            return Err(f.err(&format!("must be written [[{key}]] (an array of tables)")));
        }
        let items = f.array()?;
        if items.is_empty() {
            return Err(f.err(&format!("at least one [[{key}]] entry is required")));
        }
        Ok(items)
    }
}

impl<'a> Field<'a> {
    pub(super) fn err(&self, message: &str) -> ConfigError {
        self.cx.error(self.line, &self.path, message)
    }

    pub(super) fn wrong_type(&self, expected: &str) -> ConfigError {
        self.err(&format!(
            "expected {expected}, found {}",
            self.node.kind.describe()
        ))
    }

    pub(super) fn str(&self) -> Result<&'a str, ConfigError> {
        match &self.node.kind {
            Kind::Str(s) => Ok(s),
            _ => Err(self.wrong_type("a string")),
        }
    }

    pub(super) fn nonempty_str(&self) -> Result<&'a str, ConfigError> {
        let s = self.str()?;
        if s.is_empty() {
            return Err(self.err("must not be empty"));
        }
        Ok(s)
    }

    pub(super) fn int(&self) -> Result<i64, ConfigError> {
        match self.node.kind {
            Kind::Int(n) => Ok(n),
            _ => Err(self.wrong_type("an integer")),
        }
    }

    pub(super) fn bool(&self) -> Result<bool, ConfigError> {
        match self.node.kind {
            Kind::Bool(b) => Ok(b),
            _ => Err(self.wrong_type("a boolean")),
        }
    }

    pub(super) fn usize_in(&self, min: usize, max: usize) -> Result<usize, ConfigError> {
        let n = self.int()?;
        match usize::try_from(n) {
            Ok(v) if v >= min && v <= max => Ok(v),
            Ok(v) if v > max => Err(self.err(&format!("must be at most {max}"))),
            _ if min == 0 => Err(self.err("must not be negative")),
            _ => Err(self.err(&format!("must be >= {min}"))),
        }
    }

    /// A timeout: above zero, at most [`MAX_DURATION`].
    pub(super) fn duration(&self) -> Result<Duration, ConfigError> {
        let d = self.duration_at_most(MAX_DURATION)?;
        if d.is_zero() {
            return Err(self.err("must be > 0"));
        }
        Ok(d)
    }

    /// A duration that may be zero ("0ms" turns a feature off), up to `max`.
    pub(super) fn duration_at_most(&self, max: Duration) -> Result<Duration, ConfigError> {
        let s = self.str().map_err(|_| {
            self.err(&format!(
                "expected a duration string like \"10s\", found {}",
                self.node.kind.describe()
            ))
        })?;
        let d = parse_duration(s).map_err(|m| self.err(&m))?;
        if d > max {
            let days = if max == MAX_DURATION {
                " (30 days)"
            } else {
                ""
            };
            return Err(self.err(&format!("must be at most {}{days}", format_duration(max))));
        }
        Ok(d)
    }

    pub(super) fn array(&self) -> Result<Vec<Field<'a>>, ConfigError> {
        let Kind::Array(items) = &self.node.kind else {
            return Err(self.wrong_type("an array"));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, node)| Field {
                cx: self.cx,
                path: format!("{}[{i}]", self.path),
                line: node.line(self.cx).unwrap_or(self.line),
                node,
            })
            .collect())
    }

    pub(super) fn table(&self) -> Result<Section<'a>, ConfigError> {
        match &self.node.kind {
            Kind::Table(entries) => Ok(Section {
                cx: self.cx,
                path: self.path.clone(),
                line: self.line,
                entries,
            }),
            _ => Err(self.wrong_type("a table")),
        }
    }
}
