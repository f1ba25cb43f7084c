package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/node"
)

// max_clock_skew comes from the file, TALLY_MAX_CLOCK_SKEW or
// --max-clock-skew; a negative value is refused.
func TestServeMaxClockSkew(t *testing.T) {
	if got := node.DefaultConfig().MaxClockSkew; got != node.DefaultMaxClockSkew {
		t.Fatalf("default %s", got)
	}
	p := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(p, []byte(`{"max_clock_skew": "750ms", "dev": true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := node.DefaultConfig()
	level := "info"
	if err := loadServeFile(p, &cfg, &level); err != nil {
		t.Fatal(err)
	}
	if cfg.MaxClockSkew != 750*time.Millisecond {
		t.Fatalf("file: %s", cfg.MaxClockSkew)
	}
	code, _, errs := runCLI(t, map[string]string{"TALLY_MAX_CLOCK_SKEW": "-1s"}, "serve", "--config", p)
	if code != 2 || !strings.Contains(errs, "clock skew") {
		t.Fatalf("negative skew from the environment: %d %s", code, errs)
	}
	code, _, errs = runCLI(t, nil, "serve", "--config", p, "--max-clock-skew", "-2s")
	if code != 2 || !strings.Contains(errs, "clock skew") {
		t.Fatalf("negative skew flag: %d %s", code, errs)
	}
}
