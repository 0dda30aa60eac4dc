//! The man page `man/raftnode.1` is generated from the clap definitions in `raftnode::cli`, so
//! flags are documented in one place. These tests regenerate it, compare it with the committed
//! file, and check that it covers every flag, exit code and environment variable.
//!
//! After changing the command line, regenerate the page with
//! `UPDATE_MAN=1 cargo test --test man` and commit `man/raftnode.1`.

use std::fs;
use std::path::PathBuf;

use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// Where the committed page lives, relative to the crate root.
const MAN_PATH: &str = "man/raftnode.1";

/// Renders the whole page: the top-level command, then one section per subcommand with its
/// synopsis, options and extra help, then exit status and environment.
fn render_page() -> String {
    let mut cmd = raftnode::cli::command();
    // Building sets each subcommand's bin name ("raftnode run"), which its synopsis shows.
    cmd.build();
    let top = Man::new(cmd.clone());

    // The preamble defines the apostrophe string that every "'" in the page refers to. The
    // title is written by hand: clap_mangen drops an empty date, which shifts the later fields,
    // and a real date would change the page every day.
    let mut page = Roff::new().render();
    page += &format!(
        ".TH RAFTNODE 1 \"\" \"raftnode {}\" \"User Commands\"\n",
        cmd.get_version().unwrap_or_default()
    );
    page += &rendered(|w| top.render_name_section(w));
    page += &synopsis("SH", "SYNOPSIS", &cmd);
    page += &rendered(|w| top.render_description_section(w));
    page += &rendered(|w| top.render_options_section(w));
    page += &commands_list(&cmd);
    for sub in subcommands(&cmd) {
        assert!(
            !sub.has_subcommands(),
            "{} has subcommands of its own, which this page does not render yet",
            display_name(sub)
        );
        page += &subcommand_section(sub);
    }
    if let Some(after) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        page += &headed_blocks(&after.to_string());
    }
    page
}

/// The subcommands worth a section: all but clap's own `help`.
fn subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// Runs one of clap_mangen's section renderers and returns its roff, without the preamble
/// that every renderer repeats (the title, rendered first, keeps it).
fn rendered(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    render(&mut out).expect("rendering to memory cannot fail");
    let text = String::from_utf8(out).expect("roff output is UTF-8");
    let preamble = Roff::new().render();
    text.strip_prefix(&preamble).unwrap_or(&text).to_string()
}

/// Like `rendered`, but replaces the section's `.SH` heading line with `heading`.
fn rendered_under(
    heading: &str,
    render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> String {
    let text = rendered(render);
    let body = text
        .split_once('\n')
        .filter(|(first, _)| first.starts_with(".SH"))
        .map_or(text.as_str(), |(_, rest)| rest);
    let mut roff = Roff::new();
    roff.control("SS", [heading]);
    format!("{}{body}", without_preamble(&roff))
}

fn without_preamble(roff: &Roff) -> String {
    let preamble = Roff::new().render();
    let text = roff.render();
    text.strip_prefix(&preamble).unwrap_or(&text).to_string()
}

/// A COMMANDS section listing each subcommand with its one-line description.
fn commands_list(cmd: &clap::Command) -> String {
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    roff.text([roman(
        "Each command is described in its own section below, with all of its options.",
    )]);
    for sub in subcommands(cmd) {
        roff.control("TP", []);
        roff.text([bold(display_name(sub))]);
        if let Some(about) = sub.get_about() {
            roff.text([roman(about.to_string())]);
        }
    }
    without_preamble(&roff)
}

/// A synopsis section (`.SH` or `.SS`) holding the usage line that `--help` shows too.
fn synopsis(level: &str, heading: &str, cmd: &clap::Command) -> String {
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim().trim_start_matches("Usage:").trim();
    let name = display_name(cmd);
    let rest = usage.strip_prefix(name.as_str()).unwrap_or(usage);
    let mut roff = Roff::new();
    roff.control(level, [heading]);
    roff.text([bold(name), roman(rest)]);
    without_preamble(&roff)
}

fn display_name(sub: &clap::Command) -> String {
    sub.get_bin_name().unwrap_or(sub.get_name()).to_string()
}

/// The section of one subcommand: description, synopsis, options, and its extra help text
/// kept as written (it is laid out in aligned columns).
fn subcommand_section(sub: &clap::Command) -> String {
    let man = Man::new(sub.clone());
    let mut roff = Roff::new();
    roff.control("SH", [display_name(sub).as_str()]);
    let mut section = without_preamble(&roff);
    section += &rendered(|w| man.render_description_section(w))
        .split_once('\n')
        .map_or(String::new(), |(_, rest)| rest.to_string());
    section += &synopsis("SS", "Synopsis", sub);
    let heading = if sub.get_positionals().next().is_some() {
        "Options and arguments"
    } else {
        "Options"
    };
    section += &rendered_under(heading, |w| man.render_options_section(w));
    if let Some(after) = sub.get_after_long_help().or(sub.get_after_help()) {
        let mut roff = Roff::new();
        roff.control("SS", ["Details"]);
        roff.control("nf", []);
        for line in after.to_string().lines() {
            roff.text([roman(line)]);
        }
        roff.control("fi", []);
        section += &without_preamble(&roff);
    }
    section
}

/// Turns help text made of blocks like "Exit codes:\n  0  success\n..." into man sections:
/// a known heading gets its conventional name, "  TAG  text" lines become tagged paragraphs,
/// and a block of any other shape is kept as written.
fn headed_blocks(text: &str) -> String {
    let mut roff = Roff::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let (heading, body) = block.split_once('\n').unwrap_or((block, ""));
        let name = match heading.trim().trim_end_matches(':') {
            "Exit codes" | "Exit status" => "EXIT STATUS".to_string(),
            "Environment" => "ENVIRONMENT".to_string(),
            other => other.to_uppercase(),
        };
        roff.control("SH", [name.as_str()]);
        match tagged_entries(body) {
            Some(entries) => {
                for (tag, description) in entries {
                    roff.control("TP", []);
                    roff.text([bold(tag)]);
                    roff.text([roman(description)]);
                }
            }
            None => {
                roff.control("nf", []);
                for line in body.lines() {
                    roff.text([roman(line)]);
                }
                roff.control("fi", []);
            }
        }
    }
    without_preamble(&roff)
}

/// Splits "  TAG  description" lines (a more indented line continues the description above)
/// into pairs; `None` when some line has another shape.
fn tagged_entries(body: &str) -> Option<Vec<(String, String)>> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let first_indent = indent(body.lines().next()?);
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        let trimmed = line.trim();
        if indent(line) > first_indent {
            let (_, description) = entries.last_mut()?;
            description.push(' ');
            description.push_str(trimmed);
            continue;
        }
        let (tag, description) = trimmed.split_once("  ")?;
        entries.push((tag.to_string(), description.trim_start().to_string()));
    }
    Some(entries)
}

fn man_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(MAN_PATH)
}

/// The section of `page` that starts with the `.SH` line `heading_line`, up to the next `.SH`.
fn section<'a>(page: &'a str, heading_line: &str) -> &'a str {
    let start = page
        .find(&format!("\n{heading_line}\n"))
        .unwrap_or_else(|| panic!("the page has no section {heading_line:?}"));
    let rest = &page[start + 1..];
    let end = rest[1..].find("\n.SH ").map_or(rest.len(), |i| i + 2);
    &rest[..end]
}

/// True when `text` holds `flag` as a whole flag, not as the start of a longer one.
fn has_flag(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(i, _)| {
        let next = text[i + flag.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn man_page_matches_the_command_line() {
    let generated = render_page();
    let path = man_path();
    if std::env::var("UPDATE_MAN").is_ok_and(|v| !v.is_empty() && v != "0") {
        fs::create_dir_all(path.parent().expect("man/ has a parent")).expect("creating man/");
        fs::write(&path, &generated).unwrap_or_else(|e| panic!("writing {MAN_PATH}: {e}"));
        return;
    }
    let committed = fs::read_to_string(&path).unwrap_or_default();
    if committed == generated {
        return;
    }
    let first_difference = committed
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
    panic!(
        "{MAN_PATH} does not match the command line defined in src/cli (first difference at \
         line {}: committed {:?}, generated {:?}).\nRegenerate it with\n\n    \
         UPDATE_MAN=1 cargo test --test man\n\nand commit {MAN_PATH}.",
        first_difference + 1,
        committed
            .lines()
            .nth(first_difference)
            .unwrap_or("<end of file>"),
        generated
            .lines()
            .nth(first_difference)
            .unwrap_or("<end of file>"),
    );
}

#[test]
fn every_long_flag_is_documented_in_its_commands_section() {
    // roff writes a dash as "\-"; undo that to search for flags as typed.
    let page = render_page().replace("\\-", "-");
    let mut cmd = raftnode::cli::command();
    cmd.build();
    let mut missing = Vec::new();

    let top_end = page.find("\n.SH COMMANDS\n").expect("a COMMANDS section");
    let mut places = vec![(&cmd, &page[..top_end])];
    for sub in subcommands(&cmd) {
        let heading = format!(".SH \"{}\"", display_name(sub));
        places.push((sub, section(&page, &heading)));
    }
    for (command, text) in places {
        for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                if !has_flag(text, &format!("--{long}")) {
                    missing.push(format!("{} --{long}", display_name(command)));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from their command's section of the man page: {missing:?}"
    );
}

#[test]
fn exit_codes_and_environment_are_documented() {
    use raftnode::cli::{EXIT_FAIL, EXIT_OK, EXIT_UNKNOWN, EXIT_USAGE};

    let page = render_page();
    let exit_status = section(&page, ".SH \"EXIT STATUS\"");
    for code in [EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNKNOWN] {
        assert!(
            exit_status.contains(&format!(".TP\n\\fB{code}\\fR\n")),
            "exit code {code} is not described in EXIT STATUS:\n{exit_status}"
        );
    }
    let environment = section(&page, ".SH ENVIRONMENT");
    for variable in ["RAFTNODE_CLUSTER", "RAFTNODE_LOG"] {
        assert!(
            environment.contains(variable),
            "{variable} is not described in ENVIRONMENT:\n{environment}"
        );
    }
}
