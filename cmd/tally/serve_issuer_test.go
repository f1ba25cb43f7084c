package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestServeRequiresIssuer: outside --dev a node never derives its issuer
// from its listen address, and --dev stays on loopback.
func TestServeRequiresIssuer(t *testing.T) {
	secrets := func(k string) string {
		switch k {
		case "TALLY_KEK":
			return "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
		case "TALLY_ADMIN_TOKEN":
			return "admin-token-for-tests-only"
		}
		return ""
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--listen", "0.0.0.0:0", "--data-dir", t.TempDir()}, "--issuer is required"},
		{[]string{"serve", "--dev", "--listen", "0.0.0.0:0", "--data-dir", t.TempDir()}, "loopback"},
		{[]string{"serve", "--issuer", "http://auth.example.com", "--data-dir", t.TempDir()}, "plain http"},
		{[]string{"serve", "--issuer", "https://auth.example.com/?x=1", "--data-dir", t.TempDir()}, "issuer"},
	} {
		var stderr bytes.Buffer
		code := run(context.Background(), tc.args, env{stdout: new(bytes.Buffer), stderr: &stderr, getenv: secrets})
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
