//! The configuration reference in `docs/reference/`, generated from the binaries' own argument
//! definitions so that it cannot drift: each binary has a test that renders its `clap::Command`
//! with [`markdown`] and compares it with the checked-in file ([`check`]).
//! `TETHER_BLESS=1 cargo nextest run` rewrites the files instead.

use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

/// The reference page of one binary: its purpose, usage, and a table of every option with its
/// environment variable, default and meaning; subcommands each get a section of their own.
pub fn markdown(cmd: &Command) -> String {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut out = format!(
        "# `{}`\n\n<!-- generated from the code by test_support::reference; TETHER_BLESS=1 cargo nextest run rewrites it -->\n\n",
        cmd.get_name()
    );
    section(&cmd, &mut out, cmd.get_name().to_string(), 2);
    out
}

fn section(cmd: &Command, out: &mut String, path: String, depth: usize) {
    let top_level = depth == 2;
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        out.push_str(&format!("{}\n\n", one_paragraph(&about.to_string())));
    }
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        // A global option is listed once, where it is declared.
        .filter(|a| top_level || !a.is_global_set())
        .filter(|a| {
            !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpLong | ArgAction::Version
            )
        })
        .collect();
    let positionals: Vec<&&Arg> = args.iter().filter(|a| a.is_positional()).collect();
    let mut usage = path.clone();
    if args.iter().any(|a| !a.is_positional()) {
        usage.push_str(" [OPTIONS]");
    }
    for p in &positionals {
        let name = value_name(p);
        usage.push_str(&if p.is_required_set() {
            format!(" <{name}>")
        } else {
            format!(" [{name}]")
        });
    }
    if cmd.has_subcommands() {
        usage.push_str(" <COMMAND>");
    }
    out.push_str(&format!("```text\n{usage}\n```\n\n"));
    if !args.is_empty() {
        out.push_str("| option | environment | default | meaning |\n|---|---|---|---|\n");
        for arg in &args {
            out.push_str(&row(arg));
        }
        out.push('\n');
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_path = format!("{path} {}", sub.get_name());
        out.push_str(&format!("{} `{sub_path}`\n\n", "#".repeat(depth)));
        section(sub, out, sub_path, depth + 1);
    }
}

fn row(arg: &Arg) -> String {
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("-{short}"));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("--{long}"));
    }
    let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
    let option = if arg.is_positional() {
        format!("`<{}>`", value_name(arg))
    } else if takes_value {
        format!("`{} <{}>`", names.join(", "), value_name(arg))
    } else {
        format!("`{}`", names.join(", "))
    };
    let required = if arg.is_required_set() {
        " (required)"
    } else {
        ""
    };
    let env = arg
        .get_env()
        .map(|e| format!("`{}`", e.to_string_lossy()))
        .unwrap_or_default();
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let default = if defaults.iter().all(String::is_empty) || !takes_value {
        String::new()
    } else {
        format!("`{}`", defaults.join(","))
    };
    let mut meaning = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| one_paragraph(&h.to_string()))
        .unwrap_or_default();
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| match v.get_help() {
            Some(help) => format!("`{}` ({})", v.get_name(), one_paragraph(&help.to_string())),
            None => format!("`{}`", v.get_name()),
        })
        .collect();
    if takes_value && !possible.is_empty() && !is_bool(&possible) {
        meaning = format!("{meaning} One of: {}.", possible.join(", "))
            .trim_start()
            .to_string();
    }
    format!(
        "| {option}{required} | {env} | {default} | {} |\n",
        meaning.replace('|', "\\|")
    )
}

fn is_bool(possible: &[String]) -> bool {
    possible == ["`true`", "`false`"]
}

fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map(|n| n.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

/// Help text as one Markdown paragraph (a table cell cannot hold line breaks).
fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `docs/reference/<name>.md` of the repository.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/reference")
        .join(format!("{name}.md"))
}

/// Compares the checked-in reference page of `cmd` with what the code says; with
/// `TETHER_BLESS=1` writes it instead.
pub fn check(cmd: &Command) {
    let name = cmd.get_name().to_string();
    let wanted = markdown(cmd);
    let path = path_of(&name);
    if std::env::var_os("TETHER_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &wanted).unwrap();
        return;
    }
    let found = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        found == wanted,
        "{} is not what {name}'s arguments say; run `TETHER_BLESS=1 cargo nextest run {name}` to rewrite it. It should read:\n{wanted}",
        path.display()
    );
}
