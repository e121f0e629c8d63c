//! Kind schemas in files: `schema_file` and `schema_sha256` of a `[kinds.<name>]` table
//! (see [`super`]): reading a file through the caller's reader, checking its digest, and
//! putting it inline for signing.

use std::collections::BTreeMap;

use toml::Spanned;

use super::{Checker, DeclaredKinds, RawKindDecl};
use crate::payload::MAX_SCHEMA_BYTES;
use crate::Error;

/// How a policy's `schema_file`s are read: given the path as written in the policy
/// (already checked to be a plain relative path), the file's bytes, or why they cannot be
/// read. The caller resolves the path, normally against the policy file's directory; this
/// crate does no I/O.
pub type SchemaFiles<'a> = &'a dyn Fn(&str) -> Result<Vec<u8>, String>;

/// The reader of a policy that must be self-contained (a signed policy as broker and
/// agents receive it): every `schema_file` is refused.
pub(in crate::policy) fn no_files(_: &str) -> Result<Vec<u8>, String> {
    Err(
        "a signed policy is self-contained: the federation tooling (ketenpost-certs init, \
         policy sign) puts the file's schema inline when it signs the policy"
            .into(),
    )
}

/// The longest `schema_file` path, in bytes.
const MAX_PATH: usize = 255;

/// Whether `path` is a plain relative path: `/`-separated parts of letters, digits, `.`,
/// `_` and `-`, none of them `.` or `..`. It cannot leave the policy's directory.
fn plain_relative_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && path.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// `text` with every `schema_file = "..."` replaced by the file's schema inline
/// (`schema = '''...'''`), its `schema_sha256` kept (it then pins the inline text). The
/// policy must already check with `files`; the result is checked again by the caller.
pub(in crate::policy) fn inline_files(
    text: &str,
    raw: &BTreeMap<String, Spanned<RawKindDecl>>,
    files: SchemaFiles<'_>,
) -> Result<String, Error> {
    let checker = Checker {
        text,
        declared: &DeclaredKinds::new(),
        grounds: &crate::policy::Grounds::default(),
        more: std::cell::RefCell::default(),
    };
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    for (name, decl) in raw {
        let Some(file) = &decl.get_ref().schema_file else {
            continue;
        };
        let value = file.span();
        let Some(key_start) = key_before(text, value.start, "schema_file") else {
            return checker.err(
                value.start,
                format!(
                    "kind '{name}': schema_file must be written as a plain key \
                     (schema_file = \"...\") to be put inline"
                ),
            );
        };
        let json = files(file.get_ref())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                checker.problem(
                    value.start,
                    format!(
                        "kind '{name}': schema_file '{}' changed while it was read",
                        file.get_ref()
                    ),
                )
            })?;
        edits.push((
            key_start..value.end,
            format!("schema = {}", toml_string(&json)),
        ));
    }
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut out = text.to_owned();
    for (range, replacement) in edits {
        out.replace_range(range, &replacement);
    }
    Ok(out)
}

/// The start of the key `key` (bare or quoted) whose value starts at `value`, if the text
/// between them is ` = `.
fn key_before(text: &str, value: usize, key: &str) -> Option<usize> {
    let before = text.get(..value)?.trim_end_matches([' ', '\t']);
    let before = before.strip_suffix('=')?.trim_end_matches([' ', '\t']);
    for written in [key.to_owned(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(rest) = before.strip_suffix(written.as_str()) {
            let boundary = rest
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || matches!(c, '.' | '{' | ','));
            if boundary {
                return Some(rest.len());
            }
        }
    }
    None
}

/// `s` as a TOML string that parses back to exactly `s`: a multi-line literal string when
/// it can be one (easy to read), else a basic string with escapes.
fn toml_string(s: &str) -> String {
    let literal_ok = !s.contains("'''")
        && !s.ends_with('\'')
        && s.chars().all(|c| c == '\n' || c == '\t' || !c.is_control());
    if literal_ok {
        return format!("'''\n{s}'''");
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where a declared kind's schema text comes from.
pub(super) enum SchemaSource<'d> {
    /// An inline `schema` in the policy.
    Inline(&'d Spanned<String>),
    /// A `schema_file`, read and checked against `schema_sha256`.
    File {
        /// The path as written.
        path: String,
        /// The file's text.
        json: String,
        /// Where `schema_file` is in the policy.
        at: usize,
    },
}

impl SchemaSource<'_> {
    /// ` (file '...')` for a schema read from a file, for messages.
    pub(super) fn file_note(&self) -> String {
        match self {
            SchemaSource::Inline(_) => String::new(),
            SchemaSource::File { path, .. } => format!(" (file '{path}')"),
        }
    }
}

impl Checker<'_> {
    /// The schema text of a declaration: inline or from its file, its digest checked
    /// against `schema_sha256` when one is given (required with a file).
    pub(super) fn schema_source<'d>(
        &self,
        name: &str,
        at: usize,
        decl: &'d RawKindDecl,
        files: SchemaFiles<'_>,
    ) -> Result<SchemaSource<'d>, Error> {
        if let Some(pin) = &decl.schema_sha256 {
            let hex = pin.get_ref();
            if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return self.err(
                    pin.span().start,
                    format!("kind '{name}': schema_sha256 must be 64 lowercase hex digits"),
                );
            }
        }
        let (source, bytes, at) = match (&decl.schema, &decl.schema_file) {
            (Some(_), Some(file)) => {
                return self.err(
                    file.span().start,
                    format!(
                        "kind '{name}': both schema and schema_file are given; give the schema \
                         inline or in a file, not both"
                    ),
                )
            }
            (None, None) => {
                return self.err(
                    at,
                    format!("kind '{name}' has no schema (give schema or schema_file)"),
                )
            }
            (Some(schema), None) => {
                if schema.get_ref().len() > MAX_SCHEMA_BYTES {
                    return self.err(
                        schema.span().start,
                        format!(
                            "kind '{name}': the schema is larger than {MAX_SCHEMA_BYTES} bytes"
                        ),
                    );
                }
                let bytes = schema.get_ref().as_bytes().to_vec();
                (SchemaSource::Inline(schema), bytes, schema.span().start)
            }
            (None, Some(file)) => {
                let at = file.span().start;
                let path = file.get_ref();
                if decl.schema_sha256.is_none() {
                    return self.err(
                        at,
                        format!(
                            "kind '{name}': schema_file needs schema_sha256 (the SHA-256 of the \
                             file, 64 hex digits), so that the federation's signature over the \
                             policy covers the file's content"
                        ),
                    );
                }
                if !plain_relative_path(path) {
                    return self.err(
                        at,
                        format!(
                            "kind '{name}': schema_file '{path}' is not a plain relative path \
                             (parts of letters, digits, '.', '_' and '-' separated by '/', no \
                             '..', at most {MAX_PATH} bytes); it is read relative to the \
                             policy's directory"
                        ),
                    );
                }
                let bytes = match files(path) {
                    Ok(b) => b,
                    Err(reason) => {
                        return self.err(
                            at,
                            format!("kind '{name}': schema_file '{path}' cannot be read: {reason}"),
                        )
                    }
                };
                if bytes.len() > MAX_SCHEMA_BYTES {
                    return self.err(
                        at,
                        format!(
                            "kind '{name}': schema_file '{path}' is larger than \
                             {MAX_SCHEMA_BYTES} bytes"
                        ),
                    );
                }
                let Ok(json) = String::from_utf8(bytes.clone()) else {
                    return self.err(
                        at,
                        format!("kind '{name}': schema_file '{path}' is not UTF-8"),
                    );
                };
                let source = SchemaSource::File {
                    path: path.clone(),
                    json,
                    at,
                };
                (source, bytes, at)
            }
        };
        if let Some(pin) = &decl.schema_sha256 {
            let actual = crate::digest::sha256_hex(&bytes);
            if &actual != pin.get_ref() {
                return self.err(
                    at,
                    format!(
                        "kind '{name}': the schema{} has SHA-256 {actual}, but schema_sha256 \
                         pins {}",
                        source.file_note(),
                        pin.get_ref()
                    ),
                );
            }
        }
        Ok(source)
    }
}
