# Hello world in bash: greets the caller by the name in the event.
handler() {
  NAME="$(printf '%s' "$1" | sed -n 's/.*"name"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')"
  echo "greeting ${NAME:-world}" >&2
  printf '{"message": "%s, %s!"}' "${GREETING:-Hello}" "${NAME:-world}"
}
