package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tallyauth/tally/node"
)

// TestServeMinFreeDisk: the free-space watermark from the file (string
// with a suffix, or a number), the environment and the flag.
func TestServeMinFreeDisk(t *testing.T) {
	dir := t.TempDir()
	for body, want := range map[string]uint64{
		`{"min_free_disk": "64MiB"}`: 64 << 20,
		`{"min_free_disk": 1024}`:    1024,
		`{"min_free_disk": "0"}`:     0,
		`{"node_id": "n1"}`:          node.DefaultMinFreeDisk,
	} {
		p := filepath.Join(dir, "c.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := node.DefaultConfig()
		level := "info"
		if err := loadServeFile(p, &cfg, &level); err != nil || cfg.MinFreeDisk != want {
			t.Errorf("%s: min free disk %d, %v; want %d", body, cfg.MinFreeDisk, err, want)
		}
	}
	for _, body := range []string{`{"min_free_disk": "lots"}`, `{"min_free_disk": -1}`, `{"min_free_disk": "1.5GiB"}`} {
		p := filepath.Join(dir, "bad.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := node.DefaultConfig()
		level := "info"
		if err := loadServeFile(p, &cfg, &level); err == nil {
			t.Errorf("%s: accepted", body)
		}
	}
	code, _, errs := runCLI(t, map[string]string{"TALLY_MIN_FREE_DISK": "lots"}, "serve", "--dev")
	if code != 2 || !strings.Contains(errs, "TALLY_MIN_FREE_DISK") {
		t.Errorf("bad TALLY_MIN_FREE_DISK: %d %s", code, errs)
	}
	code, _, errs = runCLI(t, nil, "serve", "--dev", "--min-free-disk", "12 apples")
	if code != 2 || !strings.Contains(errs, "min-free-disk") {
		t.Errorf("bad --min-free-disk: %d %s", code, errs)
	}
}
