# Sourced by cross-test.sh and mcu-test.sh, after they define `die`.
#
# host_pock_binary: prints the path of the host's `pock` as `cargo test --workspace` builds it
# (the binary the integration tests run), building it that way if needed. The same features and
# profile as the README's test command mean that CI, which has just run it, compiles nothing here;
# a plain `cargo build --bin pock` resolves features for `pock` alone (without pock-ffi's uniffi,
# which changes clap's and syn's) and rebuilt about two minutes of the graph.
host_pock_binary() {
  local path
  path=$(cargo test --workspace --no-run --message-format=json-render-diagnostics |
    grep '"kind":\["bin"\]' | grep '"name":"pock"' | grep '"test":false' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | head -n 1) || true
  [ -x "$path" ] || die "cargo test --workspace --no-run did not report the pock binary"
  echo "$path"
}
