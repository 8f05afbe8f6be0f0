// SPDX-License-Identifier: GPL-2.0

//! Test results in the kselftest flavour of TAP, which the project's runner parses: a plan, one
//! `ok`/`not ok` line per test, and a closing `# Totals:` line; plus kselftest's exit codes.

use std::fmt;
use std::io::{self, Write};

/// kselftest exit codes.
pub const EXIT_PASS: u8 = 0;
pub const EXIT_FAIL: u8 = 1;
pub const EXIT_SKIP: u8 = 4;

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

/// Writes TAP for a known number of tests and counts their outcomes.
pub struct TapWriter<W: Write> {
    out: W,
    planned: usize,
    reported: usize,
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl<W: Write> TapWriter<W> {
    /// Starts the output with the version and the plan.
    pub fn new(mut out: W, planned: usize) -> io::Result<Self> {
        writeln!(out, "TAP version 13")?;
        writeln!(out, "1..{planned}")?;
        out.flush()?;
        Ok(Self {
            out,
            planned,
            reported: 0,
            passed: 0,
            failed: 0,
            skipped: 0,
        })
    }

    /// A diagnostic line, which TAP consumers show but do not count.
    pub fn diagnostic(&mut self, message: impl fmt::Display) -> io::Result<()> {
        for line in message.to_string().lines() {
            writeln!(self.out, "# {line}")?;
        }
        self.out.flush()
    }

    /// Reports the next test's outcome; a failure's reason goes in a diagnostic before it.
    pub fn report(&mut self, name: &str, outcome: &Outcome) -> io::Result<()> {
        self.reported += 1;
        let number = self.reported;
        match outcome {
            Outcome::Pass => {
                self.passed += 1;
                writeln!(self.out, "ok {number} - {name}")?;
            }
            Outcome::Fail(reason) => {
                self.failed += 1;
                self.diagnostic(reason)?;
                writeln!(self.out, "not ok {number} - {name}")?;
            }
            Outcome::Skip(reason) => {
                self.skipped += 1;
                // The directive is one line; a multi-line reason would end it early.
                let reason = reason.lines().collect::<Vec<_>>().join(" ");
                writeln!(self.out, "ok {number} - {name} # SKIP {reason}")?;
            }
        }
        self.out.flush()
    }

    /// Writes the totals line and returns the exit code: failure if any test failed or the
    /// plan was not kept, skip if every test skipped, else pass.
    pub fn finish(mut self) -> io::Result<u8> {
        // A test that never reported, e.g. because the run was cut short, counts as failed.
        let missing = self.planned.saturating_sub(self.reported);
        let failed = self.failed + missing;
        if self.reported > self.planned {
            self.diagnostic(format!(
                "{} tests reported, {} planned",
                self.reported, self.planned
            ))?;
        }
        writeln!(
            self.out,
            "# Totals: pass:{} fail:{failed} xfail:0 xpass:0 skip:{} error:0",
            self.passed, self.skipped
        )?;
        self.out.flush()?;
        Ok(if failed > 0 || self.reported > self.planned {
            EXIT_FAIL
        } else if self.skipped == self.planned {
            EXIT_SKIP
        } else {
            EXIT_PASS
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcomes: &[Outcome], planned: usize) -> (String, u8) {
        let mut out = Vec::new();
        let mut tap = TapWriter::new(&mut out, planned).expect("in-memory write");
        for (index, outcome) in outcomes.iter().enumerate() {
            tap.report(&format!("test {index}"), outcome)
                .expect("in-memory write");
        }
        let code = tap.finish().expect("in-memory write");
        (String::from_utf8(out).expect("UTF-8"), code)
    }

    #[test]
    fn mixed_outcomes_fail() {
        let (text, code) = run(
            &[
                Outcome::Pass,
                Outcome::Fail("stat is 3\nexpected 5".into()),
                Outcome::Skip("npt is Y".into()),
            ],
            3,
        );
        assert_eq!(
            text,
            "TAP version 13\n1..3\nok 1 - test 0\n# stat is 3\n# expected 5\nnot ok 2 - test 1\n\
             ok 3 - test 2 # SKIP npt is Y\n\
             # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0\n"
        );
        assert_eq!(code, EXIT_FAIL);
    }

    #[test]
    fn passes_and_skips_pass() {
        let (text, code) = run(&[Outcome::Pass, Outcome::Skip("no".into())], 2);
        assert!(text.ends_with("# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:1 error:0\n"));
        assert_eq!(code, EXIT_PASS);
    }

    #[test]
    fn all_skipped_is_a_skip() {
        let (_, code) = run(&[Outcome::Skip("a".into()), Outcome::Skip("b".into())], 2);
        assert_eq!(code, EXIT_SKIP);
    }

    #[test]
    fn unreported_tests_count_as_failed() {
        let (text, code) = run(&[Outcome::Pass], 2);
        assert!(text.ends_with("# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0\n"));
        assert_eq!(code, EXIT_FAIL);
    }
}
