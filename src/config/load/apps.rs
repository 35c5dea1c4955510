//! The `[[app]]` tables: application processes coreserve starts and proxies
//! to. Each is also an upstream group of its own name, so it takes a group's
//! proxy settings (`balance`, `keepalive`, the timeouts, `max-fails`: read
//! by `upstream_setting`, shared with `[[upstream]]`) but no `servers`: its
//! servers are its instances. As for groups, the rules that compare values
//! (names unique among apps and groups, ranges, variable names, timeouts
//! above 0) are `Config::validate`'s, and whether the program and `cwd`
//! exist is `files::preflight`'s.

use toml_edit::{ArrayOfTables, Table, Value};

use super::upstreams::PROXY_KEYS;
use super::values::set;
use super::{Field, Walker};
use crate::config::{
    app_key, AppConfig, AppListen, AppReload, Instances, StopSignal, MAX_INSTANCES, MIN_MAX_MEMORY,
};

/// The keys an app takes besides its proxy settings, in the order messages
/// list them.
const KEYS: &[&str] = &[
    "name",
    "command",
    "cwd",
    "env",
    "instances",
    "listen",
    "listen-env",
    "start-timeout",
    "stop-timeout",
    "stop-signal",
    "min-uptime",
    "reload",
    "drain-timeout",
    "max-memory",
];

/// PM2's ecosystem keys that an [[app]] spells otherwise or has no use
/// for, with what to write instead: a PM2 user's first file is written
/// from memory.
const PM2_KEYS: &[(&str, &str)] = &[
    (
        "script",
        "write command = [\"node\", \"server.js\"] (the program, then its arguments)",
    ),
    (
        "args",
        "write command = [\"node\", \"server.js\", ...] (the arguments follow the program)",
    ),
    (
        "interpreter",
        "write command = [\"node\", \"server.js\"] (the program first)",
    ),
    (
        "exec_interpreter",
        "write command = [\"node\", \"server.js\"] (the program first)",
    ),
    (
        "exec_mode",
        "none is needed: each instance is a process of its own, as in PM2's cluster mode",
    ),
    ("max_memory_restart", "write max-memory = \"300m\""),
    ("kill_timeout", "write stop-timeout = \"5s\""),
    ("listen_timeout", "write start-timeout = \"10s\""),
    (
        "wait_ready",
        "there is none: an instance is ready, and gets requests, once it accepts a connection, so listen only when the app can serve (after its warm-up)",
    ),
    (
        "autorestart",
        "none is needed: an instance that exits is always started again",
    ),
    (
        "watch",
        "none is needed: deploy, then systemctl reload coreserve (with reload = \"always\")",
    ),
    ("kill_signal", "write stop-signal = \"SIGINT\""),
    (
        "restart_delay",
        "none is needed: an instance that exits after serving 2 s is started again at once, one that exits sooner after 1, 2, 4 ... 30 s",
    ),
    (
        "exp_backoff_restart_delay",
        "none is needed: an instance that keeps exiting is started again after 1, 2, 4 ... 30 s",
    ),
    (
        "max_restarts",
        "none is needed: an instance is started again for as long as coreserve runs, its back-off growing to 30 s",
    ),
    (
        "uid",
        "none can be: an instance runs as coreserve's own user (an app that must run as another runs in a unit of its own, behind an [[upstream]])",
    ),
    (
        "gid",
        "none can be: an instance runs as coreserve's own user and group",
    ),
    (
        "out_file",
        "none is needed: an instance's output goes to coreserve's log, each line labelled app NAME[N]",
    ),
    (
        "error_file",
        "none is needed: an instance's output goes to coreserve's log, each line labelled app NAME[N]",
    ),
    (
        "log_file",
        "none is needed: an instance's output goes to coreserve's log, each line labelled app NAME[N]",
    ),
    (
        "node_args",
        "write them in command = [\"node\", \"--max-old-space-size=512\", \"server.js\"]",
    ),
    (
        "instance_var",
        "none is needed: CORESERVE_INSTANCE and NODE_APP_INSTANCE carry the instance's number",
    ),
    (
        "env_production",
        "write env = { NODE_ENV = \"production\" } (one environment per file)",
    ),
    (
        "cron_restart",
        "none is offered: restart from a timer with systemctl reload coreserve (with reload = \"always\")",
    ),
    (
        "user",
        "none can be: an instance runs as coreserve's own user (an app that must run as another runs in a unit of its own, behind an [[upstream]])",
    ),
    (
        "min_uptime",
        "write min-uptime = \"2s\"",
    ),
    (
        "merge_logs",
        "none is needed: an instance's output goes to coreserve's log, time-stamped, each line labelled app NAME[N]",
    ),
    (
        "combine_logs",
        "none is needed: an instance's output goes to coreserve's log, time-stamped, each line labelled app NAME[N]",
    ),
    (
        "log_date_format",
        "none is needed: an instance's output goes to coreserve's log, time-stamped, each line labelled app NAME[N]",
    ),
    (
        "time",
        "none is needed: an instance's output goes to coreserve's log, time-stamped, each line labelled app NAME[N]",
    ),
    (
        "pid_file",
        "none is needed: coreserve status and the coreserve_app_instance_* metrics give each instance's pid",
    ),
    (
        "increment_var",
        "none is offered: CORESERVE_INSTANCE and NODE_APP_INSTANCE carry the instance's number (from 0), and each instance has an address of its own in PORT",
    ),
    (
        "namespace",
        "none is offered: an app is known by its name",
    ),
    (
        "shutdown_with_message",
        "none is offered: an instance is told to stop by its stop-signal (SIGTERM unless stop-signal says otherwise), never by a message",
    ),
    (
        "treekill",
        "none is needed: the stop signal goes to the instance's whole process group and to the descendants that left it, as PM2's treekill",
    ),
    (
        "stop_exit_codes",
        "none is offered: an instance that exits is started again, whatever its exit status",
    ),
    (
        "source_map_support",
        "write it in command = [\"node\", \"--enable-source-maps\", \"server.js\"]",
    ),
    (
        "vizion",
        "none is needed: coreserve keeps no record of versions (deploy, then systemctl reload coreserve)",
    ),
    (
        "force",
        "none is needed: two apps may run the same program, each under its own name",
    ),
];

/// What `min-uptime` is here, said to a PM2 user who wrote `min_uptime`:
/// a like name, another use.
const MIN_UPTIME_HERE: &str = "(here, how long a rolling reload's new instance serves beside the one it replaces before that one leaves, one that exits sooner being a failed release; whatever it says, an instance that exits within 2 s of accepting connections is started again with back-off)";

/// For a PM2 key whose value carries over, what to write with the file's
/// own value (`kill_timeout = 1600` → `stop-timeout = "1.6s"`: PM2's
/// milliseconds made ours), rather than the table's example, which a
/// user copying it would take for theirs.
fn pm2_value(key: &str, value: Option<&Value>) -> Option<String> {
    let ours = match key {
        // PM2 runs a script with node (its `interpreter`, by default).
        "script" => {
            let script = value?.as_str()?;
            return Some(format!(
                "write command = [\"node\", {script:?}] (the program, then its arguments)"
            ));
        }
        "kill_timeout" => "stop-timeout",
        "listen_timeout" => "start-timeout",
        "min_uptime" => "min-uptime",
        "max_memory_restart" => {
            let size = match value? {
                Value::String(s) => s.value().to_ascii_lowercase(),
                // Bytes, as PM2 takes a number: in MiB, rounded up.
                Value::Integer(n) => {
                    format!(
                        "{}m",
                        u64::try_from(*n.value())
                            .unwrap_or(0)
                            .div_ceil(1 << 20)
                            // (At least what `max-memory` takes.)
                            .max(MIN_MAX_MEMORY >> 20)
                    )
                }
                _ => return None,
            };
            return Some(format!("write max-memory = \"{size}\""));
        }
        "kill_signal" => {
            let given = value?.as_str()?.to_ascii_uppercase();
            let named = if given.starts_with("SIG") {
                given
            } else {
                format!("SIG{given}")
            };
            // One coreserve sends (SIGKILL is not one: it comes at
            // stop-timeout anyway).
            let known = StopSignal::NAMED.iter().any(|(n, _)| *n == named);
            return Some(if known {
                format!("write stop-signal = {named:?}")
            } else {
                let names: Vec<String> = StopSignal::NAMED
                    .iter()
                    .map(|(n, _)| format!("{n:?}"))
                    .collect();
                format!(
                    "write stop-signal = one of {} (SIGKILL follows at stop-timeout in any case)",
                    names.join(", ")
                )
            });
        }
        "node_args" => {
            let args: Vec<String> = match value? {
                Value::String(s) => s.value().split_whitespace().map(str::to_string).collect(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => return None,
            };
            if args.is_empty() {
                return None;
            }
            let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
            return Some(format!(
                "write them in command = [\"node\", {}, \"server.js\"]",
                args.join(", ")
            ));
        }
        _ => return None,
    };
    let time = match value {
        // Ours already (`kill-timeout = "6s"`): as written.
        Some(Value::String(s)) => Some(s.value().clone()),
        Some(Value::Integer(n)) if *n.value() >= 0 => {
            let ms = *n.value();
            Some(if ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            })
        }
        _ => None,
    };
    // `min_uptime` is told what `min-uptime` is here in any case.
    let time = time.or_else(|| (ours == "min-uptime").then(|| "2s".to_string()))?;
    let here = if ours == "min-uptime" {
        format!(" {MIN_UPTIME_HERE}")
    } else {
        String::new()
    };
    Some(format!("write {ours} = \"{time}\"{here}"))
}

/// What `command` looks like, for messages.
const COMMAND_EXAMPLE: &str = "the program, then its arguments, like [\"node\", \"server.js\"]";

impl Walker<'_> {
    /// An app's time: as any duration, but a bare number of 1000 or more
    /// is refused. PM2 counts its times in milliseconds (`kill_timeout:
    /// 3000`), and here a bare number is seconds: 3000 would wait 50
    /// minutes before a SIGKILL.
    fn app_duration(&mut self, f: &Field) -> Option<std::time::Duration> {
        if let Some(Value::Integer(n)) = f.item.as_value() {
            let n = *n.value();
            if n >= 1000 {
                let rule = format!(
                    "a bare number is seconds here, and {n} s is {} minutes: PM2 counts \
                     milliseconds, so write \"{}ms\" or \"{}s\" (or \"{n}s\" if you mean it)",
                    n / 60,
                    n,
                    n as f64 / 1000.0
                );
                self.error(f, rule);
                return None;
            }
        }
        self.duration(f)
    }

    /// Every `[[app]]`, in file order.
    pub(super) fn apps(&mut self, apps: &ArrayOfTables) {
        for (i, t) in apps.iter().enumerate() {
            self.app(i, t);
        }
    }

    fn app(&mut self, i: usize, t: &Table) {
        let prefix = app_key(i);
        self.table_line(&prefix, t);
        // An app whose name or command could not be read keeps them empty
        // in the partial configuration; never started.
        let mut a = AppConfig::new(String::new(), Vec::new());
        let (mut named, mut commanded) = (false, false);
        // Its default depends on `listen`, which may come after it.
        let mut listen_env = None;
        for f in self.fields(t, &prefix) {
            match &f.key[prefix.len() + 1..] {
                "name" => {
                    named = true;
                    set(&mut a.name, self.string(&f));
                }
                "command" => {
                    commanded = true;
                    match f.item.as_array().and_then(|l| {
                        l.iter()
                            .map(|v| v.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                    }) {
                        Some(c) => a.command = c,
                        None => {
                            let rule = format!("must be a list of strings: {COMMAND_EXAMPLE}");
                            self.error(&f, rule);
                        }
                    }
                }
                "cwd" => {
                    if let Some(p) = self.string(&f) {
                        a.cwd = Some(self.relative_to_file(&p));
                    }
                }
                "env" => a.env = self.app_env(&f),
                "instances" => match f.item.as_value() {
                    Some(Value::String(s)) if s.value() == "auto" => {
                        a.instances = Instances::PerShard;
                    }
                    // PM2's `0` ("max") and `-1` (all CPUs but one).
                    Some(Value::Integer(n)) if *n.value() <= 0 => {
                        let rule = format!(
                            "must be 1 to {MAX_INSTANCES}, or \"auto\" (one per shard), got {}: PM2's 0 and -1 (every CPU, every CPU but one) are \"auto\" or a number here",
                            n.value()
                        );
                        self.error(&f, rule);
                    }
                    _ => {
                        let what =
                            "a number of instances or \"auto\" (one per shard: PM2's \"max\")";
                        if let Some(n) = self.count(&f, what) {
                            a.instances = Instances::Count(n);
                        }
                    }
                },
                "listen" => {
                    let choices = [("port", AppListen::Port), ("unix", AppListen::Unix)];
                    if let Some(v) = self.one_of(&f, &choices) {
                        a.listen = v;
                    }
                }
                "listen-env" => {
                    if let Some(v) = self.string(&f) {
                        listen_env = Some(v);
                    }
                }
                "start-timeout" => set(&mut a.start_timeout, self.app_duration(&f)),
                "stop-timeout" => set(&mut a.stop_timeout, self.app_duration(&f)),
                "stop-signal" => set(&mut a.stop_signal, self.one_of(&f, &StopSignal::NAMED)),
                "min-uptime" => set(&mut a.min_uptime, self.app_duration(&f)),
                "drain-timeout" => a.drain_timeout = self.app_duration(&f),
                "reload" => {
                    let choices = [
                        ("changed", AppReload::Changed),
                        ("always", AppReload::Always),
                    ];
                    if let Some(v) = self.one_of(&f, &choices) {
                        a.reload = v;
                    }
                }
                "max-memory" => {
                    if let Some(n) = self.size(&f) {
                        a.max_memory = Some(n);
                    }
                }
                "servers" => {
                    let rule = "is not a key of an app: its servers are its instances, \
                                which coreserve starts (see instances and listen)";
                    self.error(&f, rule.into());
                }
                other if self.upstream_setting(&mut a.upstream, other, &f) => {}
                // In PM2's spelling, or in ours (`kill-timeout`).
                other => match PM2_KEYS
                    .iter()
                    .find(|(k, _)| crate::http::parse::same_field(k, other))
                {
                    Some((key, instead)) => {
                        let instead = pm2_value(key, f.item.as_value())
                            .unwrap_or_else(|| instead.to_string());
                        let rule = format!("is PM2's, not a key of an app: {instead}");
                        self.error(&f, rule);
                    }
                    None => self.unknown(&f, other, &[KEYS, PROXY_KEYS].concat(), "an app"),
                },
            }
        }
        if !named {
            let rule = "is required: the app's name, also its upstream group's, \
                        which proxy routes give as upstream = \"…\"";
            self.missing(&prefix, "name", rule.into());
        }
        if !commanded {
            self.missing(
                &prefix,
                "command",
                format!("is required: {COMMAND_EXAMPLE}"),
            );
        }
        a.listen_env = listen_env.unwrap_or_else(|| a.listen.default_env().into());
        a.upstream.name = a.name.clone();
        self.config.apps.push(a);
    }

    /// `env`: a table of strings (`{ NODE_ENV = "production" }`, or an
    /// `[app.env]` table), kept in file order. Each variable's line is
    /// recorded as `app[N].env.NAME`; a value that is not a string is
    /// reported there and left out. Names are checked by `validate`.
    fn app_env(&mut self, f: &Field) -> Vec<(String, String)> {
        let Some(table) = f.item.as_table_like() else {
            let rule = "must be a table of strings, like { NODE_ENV = \"production\" }";
            self.error(f, rule.into());
            return Vec::new();
        };
        let mut env = Vec::new();
        for v in self.fields(table, &f.key) {
            let name = &v.key[f.key.len() + 1..];
            // `WORKERS = 4`, as a PM2 file's JavaScript writes it.
            let unquoted = v
                .item
                .as_value()
                .filter(|x| x.is_integer() || x.is_float() || x.is_bool());
            if unquoted.is_some() {
                let rule = format!(
                    "must be a string: write {name} = \"{}\" (an environment holds only strings)",
                    v.raw
                );
                self.error(&v, rule);
                continue;
            }
            if let Some(value) = self.string(&v) {
                env.push((name.to_string(), value));
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{parse_str, AppConfig, AppListen, Balance, Config, Instances};

    fn load(text: &str) -> Result<Config, Vec<String>> {
        parse_str(text, Path::new("/etc/cs/t.toml"))
            .map_err(|f| f.errors.iter().map(|e| e.to_string()).collect())
    }

    fn node() -> Vec<String> {
        vec!["node".into(), "server.js".into()]
    }

    #[test]
    fn every_key() {
        let c = load(
            r#"
[[app]]
name = "web.v2_blue-1"
command = ["node", "--enable-source-maps", "server.js"]
cwd = "app"
env = { NODE_ENV = "production", A_1 = "", _x = "a b" }
instances = 4
listen = "unix"
listen-env = "APP_SOCKET"
start-timeout = "30s"
stop-timeout = 2
stop-signal = "SIGINT"
min-uptime = "0s"
reload = "always"
drain-timeout = "3s"
max-memory = "300m"
balance = "least-conn"
keepalive = 0
idle-timeout = "3s"
connect-timeout = "500ms"
read-timeout = 30
send-timeout = "1m"
max-fails = 0
fail-timeout = "20s"
"#,
        )
        .unwrap();
        let mut upstream = crate::config::UpstreamConfig::new("web.v2_blue-1", Vec::new());
        upstream.balance = Balance::LeastConn;
        upstream.keepalive = 0;
        upstream.idle_timeout = Duration::from_secs(3);
        upstream.connect_timeout = Duration::from_millis(500);
        upstream.read_timeout = Duration::from_secs(30);
        upstream.send_timeout = Duration::from_secs(60);
        upstream.max_fails = 0;
        upstream.fail_timeout = Duration::from_secs(20);
        assert_eq!(
            c.apps,
            [AppConfig {
                name: "web.v2_blue-1".into(),
                command: vec![
                    "node".into(),
                    "--enable-source-maps".into(),
                    "server.js".into()
                ],
                cwd: Some("/etc/cs/app".into()),
                // Followed by `preflight`, not by the load.
                cwd_target: None,
                env: vec![
                    ("NODE_ENV".into(), "production".into()),
                    ("A_1".into(), String::new()),
                    ("_x".into(), "a b".into()),
                ],
                instances: Instances::Count(4),
                listen: AppListen::Unix,
                listen_env: "APP_SOCKET".into(),
                start_timeout: Duration::from_secs(30),
                stop_timeout: Duration::from_secs(2),
                stop_signal: crate::config::StopSignal::Int,
                min_uptime: Duration::ZERO,
                reload: crate::config::AppReload::Always,
                drain_timeout: Some(Duration::from_secs(3)),
                max_memory: Some(300 << 20),
                upstream,
            }]
        );
        assert_eq!(c.lines["app[1]]"], 2);
        assert_eq!(c.lines["app[1].stop-timeout"], 11);
        assert_eq!(c.lines["app[1].env.A_1"], 6);
    }

    #[test]
    fn defaults_and_file_order() {
        let c = load(
            "[[app]]\nname = \"a\"\ncommand = [\"node\", \"server.js\"]\n\n\
             [[app]]\nname = \"b\"\ncommand = [\"/usr/bin/b\"]\ninstances = \"auto\"\n",
        )
        .unwrap();
        assert_eq!(
            c.apps,
            [
                AppConfig::new("a", node()),
                AppConfig::new("b", vec!["/usr/bin/b".into()]),
            ]
        );
        let a = &c.apps[0];
        // One instance per shard, each given a port in $PORT; the group
        // is the app's, with a group's defaults.
        assert_eq!(a.instances, Instances::PerShard);
        assert_eq!((a.listen, a.listen_env.as_str()), (AppListen::Port, "PORT"));
        assert_eq!(a.upstream.name, "a");
        assert_eq!(
            a.upstream,
            crate::config::UpstreamConfig::new("a", Vec::new())
        );
        assert_eq!(a.cwd, None);
        assert!(load("").unwrap().apps.is_empty());
    }

    #[test]
    fn listen_env_follows_listen_unless_set() {
        let app = |keys: &str| {
            let text = format!("[[app]]\nname = \"a\"\ncommand = [\"a\"]\n{keys}");
            let a = load(&text).unwrap().apps.remove(0);
            (a.listen, a.listen_env)
        };
        assert_eq!(
            app("listen = \"unix\"\n"),
            (AppListen::Unix, "SOCKET".into())
        );
        assert_eq!(app("listen = \"port\"\n"), (AppListen::Port, "PORT".into()));
        // Set before or after listen, it stays as set.
        assert_eq!(
            app("listen-env = \"APP_PORT\"\nlisten = \"unix\"\n"),
            (AppListen::Unix, "APP_PORT".into())
        );
        assert_eq!(
            app("listen = \"unix\"\nlisten-env = \"PORT\"\n"),
            (AppListen::Unix, "PORT".into())
        );
    }

    #[test]
    fn env_may_be_a_table_of_its_own_and_cwd_absolute() {
        let c = load(
            "[[app]]\nname = \"a\"\ncommand = [\"a\"]\ncwd = \"/srv/a\"\n\n\
             [app.env]\nZ = \"1\"\nA = \"2\"\n",
        )
        .unwrap();
        assert_eq!(c.apps[0].cwd.as_deref(), Some(Path::new("/srv/a")));
        assert_eq!(
            c.apps[0].env,
            [("Z".into(), "1".into()), ("A".into(), "2".into())]
        );
        assert_eq!(c.lines["app[1].env.A"], 8);
    }

    #[test]
    fn each_bad_value_with_its_line() {
        let errs = load(
            r#"[[app]]
name = 7
command = "node server.js"
cwd = 3
env = "NODE_ENV=production"
instances = "many"
listen = "tcp"
listen-env = 5
start-timeout = "soon"
stop-timeout = -1
balance = "random"
servers = ["127.0.0.1:3000"]
restart = "always"

[[app]]
command = [1]
env = { PORT = 3000, NODE_ENV = "production" }
instances = -1

[[app]]
stop-signal = "TERM"
"#,
        )
        .unwrap_err();
        let at = |line: usize, rest: &str| format!("/etc/cs/t.toml:{line}: {rest}");
        assert_eq!(
            errs,
            [
                at(2, "app[1].name: must be a string"),
                at(3, "app[1].command: must be a list of strings: the program, then its arguments, like [\"node\", \"server.js\"]"),
                at(4, "app[1].cwd: must be a string"),
                at(5, "app[1].env: must be a table of strings, like { NODE_ENV = \"production\" }"),
                at(6, "app[1].instances: must be a number of instances or \"auto\" (one per shard: PM2's \"max\"), got \"many\""),
                at(7, "app[1].listen: must be \"port\" or \"unix\", got \"tcp\""),
                at(8, "app[1].listen-env: must be a string"),
                at(9, "app[1].start-timeout: must be a duration like 500ms, 60s, 1.5s, 5m, 1h 30m or 1d, got \"soon\""),
                at(10, "app[1].stop-timeout: must be a duration like 500ms, 60s, 1.5s, 5m, 1h 30m or 1d, got \"-1\""),
                at(11, "app[1].balance: must be \"round-robin\", \"least-conn\" or \"ip-hash\", got \"random\""),
                at(12, "app[1].servers: is not a key of an app: its servers are its instances, which coreserve starts (see instances and listen)"),
                at(13, "app[1].restart: unknown key (an app takes name, command, cwd, env, instances, listen, listen-env, start-timeout, stop-timeout, stop-signal, min-uptime, reload, drain-timeout, max-memory, balance, keepalive, idle-timeout, connect-timeout, read-timeout, send-timeout, buffer, request-buffer, max-fails, fail-timeout)"),
                at(16, "app[2].command: must be a list of strings: the program, then its arguments, like [\"node\", \"server.js\"]"),
                at(17, "app[2].env.PORT: must be a string: write PORT = \"3000\" (an environment holds only strings)"),
                at(18, "app[2].instances: must be 1 to 256, or \"auto\" (one per shard), got -1: PM2's 0 and -1 (every CPU, every CPU but one) are \"auto\" or a number here"),
                at(15, "app[2].name: is required: the app's name, also its upstream group's, which proxy routes give as upstream = \"…\""),
                at(21, "app[3].stop-signal: must be \"SIGTERM\", \"SIGINT\", \"SIGQUIT\", \"SIGHUP\", \"SIGUSR1\" or \"SIGUSR2\", got \"TERM\""),
                at(20, "app[3].name: is required: the app's name, also its upstream group's, which proxy routes give as upstream = \"…\""),
                at(20, "app[3].command: is required: the program, then its arguments, like [\"node\", \"server.js\"]"),
            ]
        );
    }

    /// A file written from a PM2 ecosystem file's memory: each of PM2's
    /// keys is told what to write instead, and PM2's spelling of a key
    /// coreserve has (`min_uptime`) what it is here.
    #[test]
    fn pm2_keys_are_told_their_names_here() {
        let errs = load(
            r#"[[app]]
name = "web"
script = "server.js"
max_memory_restart = "300M"
exec_mode = "cluster"
min_uptime = "2s"
instances = "max"
kill-timeout = 3000
uid = "www"
listen_timeout = 1500
"#,
        )
        .unwrap_err();
        let at = |line: usize, rest: &str| format!("/etc/cs/t.toml:{line}: {rest}");
        assert_eq!(
            errs[..8],
            [
                at(3, "app[1].script: is PM2's, not a key of an app: write command = [\"node\", \"server.js\"] (the program, then its arguments)"),
                at(4, "app[1].max_memory_restart: is PM2's, not a key of an app: write max-memory = \"300m\""),
                at(5, "app[1].exec_mode: is PM2's, not a key of an app: none is needed: each instance is a process of its own, as in PM2's cluster mode"),
                // A like name, another use: said.
                at(6, "app[1].min_uptime: is PM2's, not a key of an app: write min-uptime = \"2s\" (here, how long a rolling reload's new instance serves beside the one it replaces before that one leaves, one that exits sooner being a failed release; whatever it says, an instance that exits within 2 s of accepting connections is started again with back-off)"),
                at(7, "app[1].instances: must be a number of instances or \"auto\" (one per shard: PM2's \"max\"), got \"max\""),
                // In either spelling.
                at(8, "app[1].kill-timeout: is PM2's, not a key of an app: write stop-timeout = \"3s\""),
                at(9, "app[1].uid: is PM2's, not a key of an app: none can be: an instance runs as coreserve's own user (an app that must run as another runs in a unit of its own, behind an [[upstream]])"),
                at(10, "app[1].listen_timeout: is PM2's, not a key of an app: write start-timeout = \"1500ms\""),
            ]
        );
    }

    /// Probe B: what a PM2 user wrote is carried into what to write here
    /// (their signal, arguments, size in bytes, our spelling's string), and
    /// PM2's other keys are each told why none is needed.
    #[test]
    fn pm2_values_carry_over_into_the_hint() {
        let errs = load(
            r#"[[app]]
name = "web"
command = ["node", "server.js"]
kill_signal = "term"
node_args = "--max-old-space-size=200 --trace-warnings"
max_memory_restart = 157286400
kill-timeout = "6s"
merge_logs = true
user = "www"
treekill = false
"#,
        )
        .unwrap_err();
        let rules: Vec<&str> = errs
            .iter()
            .map(|e| e.split_once("not a key of an app: ").unwrap().1)
            .collect();
        let script = load("[[app]]\nname = \"w\"\nscript = \"dist/main.js\"\n").unwrap_err();
        assert!(
            script[0].ends_with(
                "write command = [\"node\", \"dist/main.js\"] (the program, then its arguments)"
            ),
            "{script:?}"
        );
        assert_eq!(
            rules,
            [
                "write stop-signal = \"SIGTERM\"",
                "write them in command = [\"node\", \"--max-old-space-size=200\", \"--trace-warnings\", \"server.js\"]",
                "write max-memory = \"150m\"",
                "write stop-timeout = \"6s\"",
                "none is needed: an instance's output goes to coreserve's log, time-stamped, each line labelled app NAME[N]",
                "none can be: an instance runs as coreserve's own user (an app that must run as another runs in a unit of its own, behind an [[upstream]])",
                "none is needed: the stop signal goes to the instance's whole process group and to the descendants that left it, as PM2's treekill",
            ]
        );
        // Under the smallest `max-memory`: that, not a value refused.
        let small = load("[[app]]\nname = \"w\"\ncommand = [\"a\"]\nmax_memory_restart = 1000\n")
            .unwrap_err();
        assert!(small[0].ends_with("write max-memory = \"4m\""), "{small:?}");
    }

    /// PM2's milliseconds written as a bare number are refused, with what
    /// to write: read as seconds, `stop-timeout = 3000` waited 50 minutes.
    #[test]
    fn an_apps_time_in_pm2_milliseconds_is_refused() {
        let errs = load(
            r#"[[app]]
name = "web"
command = ["node", "server.js"]
stop-timeout = 1600
start-timeout = 30
min-uptime = 5000
"#,
        )
        .unwrap_err();
        let at = |line: usize, rest: &str| format!("/etc/cs/t.toml:{line}: {rest}");
        assert_eq!(
            errs,
            [
                at(4, "app[1].stop-timeout: a bare number is seconds here, and 1600 s is 26 minutes: PM2 counts milliseconds, so write \"1600ms\" or \"1.6s\" (or \"1600s\" if you mean it)"),
                at(6, "app[1].min-uptime: a bare number is seconds here, and 5000 s is 83 minutes: PM2 counts milliseconds, so write \"5000ms\" or \"5s\" (or \"5000s\" if you mean it)"),
            ]
        );
    }

    #[test]
    fn a_bad_value_leaves_the_rest_of_the_app_read() {
        let f = parse_str(
            "[[app]]\nname = \"a\"\ncommand = [\"a\"]\nlisten = \"tcp\"\nenv = { A = 1, B = \"2\" }\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        let a = &f.partial.unwrap().apps[0];
        assert_eq!((a.name.as_str(), a.upstream.name.as_str()), ("a", "a"));
        assert_eq!(a.listen, AppListen::Port);
        assert_eq!(a.env, [("B".into(), "2".into())]);
    }

    #[test]
    fn a_route_names_an_app_as_its_upstream() {
        let text = r#"
[[upstream]]
name = "api"
servers = ["127.0.0.1:3001"]

[[app]]
name = "web"
command = ["node", "server.js"]

[[route]]
path = "/"
handler = "proxy"
upstream = "web"
"#;
        let c = load(text).unwrap().validate().unwrap();
        assert_eq!(c.apps[0].upstream.name, "web");
        // The same name as a group is an error at the app's name.
        let errs: Vec<String> = load(&text.replace("\"web\"", "\"api\""))
            .unwrap()
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            errs,
            ["/etc/cs/t.toml:7: app[1].name: \"api\" is already the name of upstream[1] (an app is an upstream group of its own name)"]
        );
    }

    #[test]
    fn app_must_be_tables() {
        let errs = load("app = \"node server.js\"\n").unwrap_err();
        assert_eq!(
            errs,
            ["/etc/cs/t.toml:1: app: must be written as [[app]] tables"]
        );
    }
}
