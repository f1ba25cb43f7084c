package main

import (
	"strings"
	"testing"
)

func TestRedactedCommand(t *testing.T) {
	got := redactedCommand("tally loadtest client-credentials", []string{
		"--client-id", "svc", "--client-secret", "s3cr3t-a", "-admin-token=s3cr3t-b",
		"--user", "alice:s3cr3t-c", "--user=bob:s3cr3t-d", "--concurrency", "8", "--admin-token",
	})
	if strings.Contains(got, "s3cr3t") {
		t.Fatalf("secret in %q", got)
	}
	for _, want := range []string{"--client-id svc", "--client-secret [redacted]", "-admin-token=[redacted]", "--user alice:[redacted]", "--user=bob:[redacted]", "--concurrency 8"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
}
