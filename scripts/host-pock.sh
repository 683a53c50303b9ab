# Sourced by cross-test.sh and mcu-test.sh, after they define `die`.
#
# workspace_executable KIND NAME: prints the path of the host's binary NAME (KIND bin or example)
# as `cargo test --workspace` builds it (the `pock` the integration tests run; cargo test builds
# the examples too), building it that way if needed. The same features and profile as the
# README's test command mean that CI, which has just run it, compiles nothing here; a plain
# `cargo build --bin pock` or `cargo run --example` resolves features for `pock` alone (without
# pock-ffi's uniffi, which changes clap's and syn's) and rebuilt about two minutes of the graph.
workspace_executable() {
  local path
  path=$(cargo test --workspace --no-run --message-format=json-render-diagnostics |
    grep "\"kind\":\[\"$1\"\]" | grep "\"name\":\"$2\"" | grep '"test":false' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | head -n 1) || true
  [ -x "$path" ] || die "cargo test --workspace --no-run did not report the $1 $2"
  echo "$path"
}
host_pock_binary() { workspace_executable bin pock; }
