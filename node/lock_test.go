package node

import (
	"context"
	"strings"
	"testing"
)

// TestDataDirInUse: a second node on the same data directory fails at once
// and says the directory is in use, instead of a bbolt timeout.
func TestDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	l, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.release()
	cfg := DefaultConfig()
	cfg.Dev = true
	cfg.DataDir = dir
	cfg.Listen, cfg.RaftBind, cfg.NATSListen = "127.0.0.1:0", "127.0.0.1:0", ""
	_, err = New(context.Background(), cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "in use by another tally process (pid ") {
		t.Fatalf("New = %v, want the data directory in use", err)
	}
	l.release()
	if l2, err := lockDataDir(dir); err != nil {
		t.Fatalf("lock after release: %v", err)
	} else {
		l2.release()
	}
}
