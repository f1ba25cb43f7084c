package loadtest

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzReadResult feeds arbitrary files to ReadResult (what --compare
// reads): it must not panic, and what it accepts must encode again and
// compare without dividing by zero.
func FuzzReadResult(f *testing.F) {
	f.Add([]byte(`{"report":{"scenario":"mixed","requests":3,"ok":2,"errors":{"invalid_grant":1},"throughput":2,"p99_ms":4},"scenarios":[],"timeline":[{"t":0,"requests":3}],"distribution":[],"events":[{"at_ms":1,"label":"x"}]}`))
	f.Add([]byte(`{"scenario":"client-credentials","requests":1,"ok":1,"p50_ms":-1}`))
	f.Add([]byte(`{"report":null}`))
	f.Add([]byte(`{"scenario":7}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		res, err := ReadResult(bytes.NewReader(b))
		if err != nil {
			return
		}
		if _, err := json.Marshal(res); err != nil {
			t.Fatalf("accepted %q but cannot encode it: %v", b, err)
		}
		for _, r := range CompareResults(res, res) {
			if r.Throughput != r.Throughput || r.P99 != r.P99 { // NaN
				t.Fatalf("NaN ratio for %q", b)
			}
		}
		var buf bytes.Buffer
		if err := WriteHTML(&buf, "fuzz", res); err != nil {
			t.Fatalf("WriteHTML: %v", err)
		}
	})
}

// FuzzParseMix feeds arbitrary --mix values: no panic, and an accepted mix
// has distinct names and weights in range.
func FuzzParseMix(f *testing.F) {
	f.Add("client-credentials=70,introspect=20,refresh=10")
	f.Add("a=1,,b=2")
	f.Add("=")
	f.Add("a=1,a=1")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMix(s)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, e := range m {
			if e.Scenario == "" || strings.TrimSpace(e.Scenario) != e.Scenario || seen[e.Scenario] || e.Weight < 1 || e.Weight > maxMixWeight {
				t.Fatalf("ParseMix(%q) accepted %+v", s, m)
			}
			seen[e.Scenario] = true
		}
	})
}

// FuzzClassifyIntrospection feeds arbitrary introspection answers.
func FuzzClassifyIntrospection(f *testing.F) {
	f.Add(200, []byte(`{"active":true}`))
	f.Add(200, []byte(`{"active":false}`))
	f.Add(200, []byte(`{"active":"yes"}`))
	f.Add(401, []byte(`{"error":"invalid_client"}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		got := classifyIntrospection(status, body)
		if got == "" || len(got) > maxErrorCodeLen+len("http_")+20 {
			t.Fatalf("classifyIntrospection(%d, %q) = %q", status, body, got)
		}
	})
}
