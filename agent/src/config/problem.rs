//! Configuration problems: what is wrong, where (file:line:col) and how to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with the configuration, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in, when it is in one file.
    pub file: Option<PathBuf>,
    /// 1-based line and column, when known.
    pub line_col: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The offending source line, for a caret display.
    pub snippet: Option<String>,
}

impl Problem {
    /// A problem not tied to one position (e.g. a cross-section reference).
    pub fn general(message: impl Into<String>) -> Self {
        Problem {
            file: None,
            line_col: None,
            message: message.into(),
            hint: None,
            snippet: None,
        }
    }

    /// A problem at a byte span of a source file.
    pub fn at(src: &Source, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, col) = src.line_col(span.start);
        Problem {
            file: Some(src.path.clone()),
            line_col: Some((line, col)),
            message: message.into(),
            hint: None,
            snippet: src.text.lines().nth(line - 1).map(str::to_owned),
        }
    }

    /// A problem about a whole file (unreadable, missing).
    pub fn in_file(path: &Path, message: impl Into<String>) -> Self {
        Problem {
            file: Some(path.to_owned()),
            ..Problem::general(message)
        }
    }

    /// Attach a hint saying how to fix the problem.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line_col) {
            (Some(p), Some((l, c))) => write!(f, "{}:{l}:{c}: ", p.display())?,
            (Some(p), None) => write!(f, "{}: ", p.display())?,
            _ => {}
        }
        write!(f, "{}", self.message)?;
        if let (Some(s), Some((_, c))) = (&self.snippet, self.line_col) {
            write!(f, "\n    | {s}\n    | {:>width$}", "^", width = c)?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n    hint: {h}")?;
        }
        Ok(())
    }
}

/// Every problem found while loading; loading reports all of them, not just the first.
#[derive(Debug, Clone, Default, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The text of one configuration file, kept to turn byte spans into line:col.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path as given (main file or drop-in).
    pub path: PathBuf,
    /// Full text.
    pub text: String,
}

impl Source {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }
}

/// Collects problems while validating one file.
pub struct Check<'a> {
    /// The file being checked.
    pub src: &'a Source,
    /// Problems found so far.
    pub problems: &'a mut Vec<Problem>,
    /// Whether files named outside `[luks]` (keys, certificates, secrets) are
    /// looked at on disk. The LUKS helper loads the configuration as root
    /// without `CAP_DAC_OVERRIDE`, so it cannot (and need not) reach the
    /// agent's 0700 key directory; it checks only the files it uses.
    pub other_files: bool,
}

impl Check<'_> {
    /// Record a problem at `span`.
    pub fn err(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        let p = Problem::at(self.src, span, message).hint(hint);
        self.problems.push(p);
    }
}
