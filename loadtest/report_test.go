package loadtest

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleReport() Report {
	return Report{
		Scenario:    ScenarioClientCredentials,
		Target:      "http://127.0.0.1:8080/t/default/token",
		Concurrency: 32,
		Rate:        1500.5,
		Duration:    10*time.Second + 123456789,
		Requests:    12345,
		OK:          12300,
		Errors:      map[string]int64{"invalid_client": 40, OutcomeTransport: 5},
		Throughput:  1230.1,
		P50:         1234567,
		P90:         2*time.Millisecond + 1,
		P99:         12 * time.Millisecond,
		P999:        45*time.Millisecond + 999,
		Max:         time.Second + 3,
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	in := sampleReport()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Report
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip:\n in %+v\nout %+v", in, out)
	}

	var wire map[string]any
	if err := json.Unmarshal(b, &wire); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"scenario":    ScenarioClientCredentials,
		"concurrency": 32.0,
		"rate":        1500.5,
		"duration_ms": 10123.456789,
		"requests":    12345.0,
		"ok":          12300.0,
		"throughput":  1230.1,
		"p50_ms":      1.234567,
		"p99_ms":      12.0,
		"max_ms":      1000.000003,
	} {
		if wire[key] != want {
			t.Errorf("%s = %v, want %v", key, wire[key], want)
		}
	}
	for _, key := range []string{"p90_ms", "p999_ms", "errors", "target"} {
		if _, ok := wire[key]; !ok {
			t.Errorf("no %s in %s", key, b)
		}
	}

	// A report without errors still has an errors object.
	b, _ = json.Marshal(Report{Scenario: "x"})
	if !strings.Contains(string(b), `"errors":{}`) {
		t.Errorf("empty report: %s", b)
	}
	if err := json.Unmarshal([]byte(`{"p99_ms":"slow"}`), &out); err == nil {
		t.Error("decoded a string latency")
	}
}

func TestWriteTable(t *testing.T) {
	a := sampleReport()
	b := sampleReport()
	b.Target, b.Rate, b.Errors = "baseline", 0, nil
	var buf bytes.Buffer
	if err := WriteTable(&buf, a, b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want header and two rows, got:\n%s", buf.String())
	}
	for _, want := range []string{"req/s", "p99", "p99.9"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header %q lacks %q", lines[0], want)
		}
	}
	for _, want := range []string{a.Target, "1500/s", "12345", "1230", "1.235ms", "12.000ms", "invalid_client=40, transport=5"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row %q lacks %q", lines[1], want)
		}
	}
	if !strings.Contains(lines[2], "baseline") || !strings.HasSuffix(strings.TrimSpace(lines[2]), "-") {
		t.Errorf("row %q", lines[2])
	}
	buf.Reset()
	if err := a.WriteText(&buf); err != nil || strings.Count(buf.String(), "\n") != 2 {
		t.Errorf("WriteText: %v\n%s", err, buf.String())
	}
}

func TestHistogramClampsAndPercentiles(t *testing.T) {
	h := newHistogram()
	recordLatency(h, 0)
	recordLatency(h, 2*time.Minute)
	for range 98 {
		recordLatency(h, time.Millisecond)
	}
	if h.TotalCount() != 100 {
		t.Fatalf("%d samples, want 100", h.TotalCount())
	}
	var r Report
	r.fillLatencies(h)
	// 3 significant digits: within 0.1%.
	if d := r.P50 - time.Millisecond; d < -time.Microsecond || d > time.Microsecond {
		t.Errorf("p50 = %v", r.P50)
	}
	if r.Max < 59*time.Second {
		t.Errorf("max = %v, want the clamped 60s", r.Max)
	}
	r.Duration, r.OK = 2*time.Second, 100
	r.fillThroughput()
	if r.Throughput != 50 {
		t.Errorf("throughput = %v", r.Throughput)
	}
}
