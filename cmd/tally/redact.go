package main

import "strings"

// secretFlags take a secret value: reports echo the command line with their
// values replaced.
var secretFlags = map[string]bool{"client-secret": true, "admin-token": true, "public-client-secret": true}

// redactedCommand is the command line prefix + args for a report, with the
// values of secret flags and the password of --user NAME:PASSWORD replaced
// by "[redacted]". Reports are shared; secrets never appear in them.
func redactedCommand(prefix string, args []string) string {
	out := make([]string, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		out[i] = a
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			continue
		}
		secret := secretFlags[name]
		user := name == "user"
		if !secret && !user {
			continue
		}
		redact := func(v string) string {
			if user {
				if n, _, ok := strings.Cut(v, ":"); ok {
					return n + ":[redacted]"
				}
				return v
			}
			return "[redacted]"
		}
		if hasValue {
			out[i] = a[:len(a)-len(value)] + redact(value)
			continue
		}
		if i+1 < len(args) {
			out[i+1] = redact(args[i+1])
			i++
		}
	}
	return strings.TrimSpace(prefix + " " + strings.Join(out, " "))
}
