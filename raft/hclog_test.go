package raft

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHCLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	l := newHCLogAdapter(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), hclog.Info)

	l.Debug("hidden by the adapter's level")
	l.Trace("hidden too")
	l.Named("raft").With("peer", "n2").Warn("slow", "ms", 12)
	l.Info("odd args", "dangling")
	l.StandardLogger(nil).Print("from std logger")
	if l.IsDebug() || !l.IsInfo() || !l.IsError() {
		t.Fatal("level checks")
	}
	l.SetLevel(hclog.Debug)
	l.Debug("shown now")
	if l.GetLevel() != hclog.Debug {
		t.Fatal("GetLevel")
	}
	l.SetLevel(hclog.Off)
	l.Error("off")

	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		recs = append(recs, m)
	}
	if len(recs) != 4 {
		t.Fatalf("got %d records: %s", len(recs), buf.String())
	}
	if r := recs[0]; r["msg"] != "slow" || r["level"] != "WARN" || r["logger"] != "raft" || r["peer"] != "n2" || r["ms"] != float64(12) {
		t.Fatalf("record 0 = %v", r)
	}
	if r := recs[1]; r["msg"] != "odd args" || r["!BADKEY"] != "dangling" {
		t.Fatalf("record 1 = %v", r)
	}
	if r := recs[2]; r["msg"] != "from std logger" || r["level"] != "INFO" {
		t.Fatalf("record 2 = %v", r)
	}
	if r := recs[3]; r["msg"] != "shown now" || r["level"] != "DEBUG" {
		t.Fatalf("record 3 = %v", r)
	}

	// The slog handler's level filters too.
	buf.Reset()
	quiet := newHCLogAdapter(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})), hclog.Info)
	quiet.Info("dropped")
	if buf.Len() != 0 || quiet.IsInfo() {
		t.Fatalf("info passed a warn handler: %s", buf.String())
	}
}
