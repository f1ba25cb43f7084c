package loadtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// MixEntry is one part of a mixed load: a scenario name and its weight.
type MixEntry struct {
	Scenario string
	Weight   int
}

// maxMixWeight bounds one weight, and maxMixParts the parts of a mix.
const (
	maxMixWeight = 1_000_000
	maxMixParts  = 16
)

// ParseMix parses "name=weight,name=weight", e.g.
// "client-credentials=70,introspect=20,refresh=10". Names must be distinct
// and weights positive integers; names are not checked against the
// scenarios here.
func ParseMix(s string) ([]MixEntry, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("loadtest: empty mix")
	}
	var out []MixEntry
	seen := map[string]bool{}
	for part := range strings.SplitSeq(s, ",") {
		name, w, ok := strings.Cut(strings.TrimSpace(part), "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("loadtest: mix part %q is not name=weight", part)
		}
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n < 1 || n > maxMixWeight {
			return nil, fmt.Errorf("loadtest: weight of %s must be an integer in [1, %d]", name, maxMixWeight)
		}
		if seen[name] {
			return nil, fmt.Errorf("loadtest: %s appears twice in the mix", name)
		}
		seen[name] = true
		out = append(out, MixEntry{Scenario: name, Weight: n})
		if len(out) > maxMixParts {
			return nil, fmt.Errorf("loadtest: more than %d parts in the mix", maxMixParts)
		}
	}
	return out, nil
}

// WeightedScenario is a part of a MixedScenario.
type WeightedScenario struct {
	Scenario Scenario
	Weight   int
}

// MixedScenario runs several scenarios at once: each iteration of each
// virtual client picks one part at random in proportion to the weights
// (from a generator seeded by the client's index, so a run's sequence of
// choices is reproducible). Every virtual client holds one client of each
// part, so per-client state (a refresh chain, a browser session) carries
// across iterations. Results are reported per part under its name.
type MixedScenario struct {
	Parts []WeightedScenario
	total int
}

// NewMixedScenario checks the parts and returns the scenario.
func NewMixedScenario(parts []WeightedScenario) (*MixedScenario, error) {
	if len(parts) == 0 {
		return nil, errors.New("loadtest: a mixed load needs at least one part")
	}
	m := &MixedScenario{Parts: parts}
	seen := map[string]bool{}
	for _, p := range parts {
		if p.Scenario == nil || p.Weight < 1 || p.Weight > maxMixWeight {
			return nil, errors.New("loadtest: every part of a mix needs a scenario and a weight in [1, 1000000]")
		}
		if seen[p.Scenario.Name()] {
			return nil, fmt.Errorf("loadtest: %s appears twice in the mix", p.Scenario.Name())
		}
		seen[p.Scenario.Name()] = true
		m.total += p.Weight
	}
	return m, nil
}

// Name is ScenarioMixed.
func (m *MixedScenario) Name() string { return ScenarioMixed }

// CloseIdleConnections closes the parts' idle connections.
func (m *MixedScenario) CloseIdleConnections() {
	for _, p := range m.Parts {
		if c, ok := p.Scenario.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

// NewOp prepares virtual client i of every part.
func (m *MixedScenario) NewOp(ctx context.Context, i int) (Op, error) {
	o := &mixedOp{m: m, ops: make([]Op, len(m.Parts)), rng: rand.New(rand.NewPCG(uint64(i), 0x7a11_7a11)), last: -1}
	for j, p := range m.Parts {
		op, err := p.Scenario.NewOp(ctx, i)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Scenario.Name(), err)
		}
		o.ops[j] = op
	}
	return o, nil
}

type mixedOp struct {
	m    *MixedScenario
	ops  []Op
	rng  *rand.Rand
	last int
}

func (o *mixedOp) pick() int {
	n := o.rng.IntN(o.m.total)
	for j, p := range o.m.Parts {
		if n < p.Weight {
			return j
		}
		n -= p.Weight
	}
	return len(o.m.Parts) - 1
}

func (o *mixedOp) Do(ctx context.Context) (Outcome, bool) {
	j := o.pick()
	o.last = j
	out, answered := o.ops[j].Do(ctx)
	if out.Scenario == "" {
		out.Scenario = o.m.Parts[j].Scenario.Name()
	}
	return out, answered
}

// Recover passes on to the part that ran last.
func (o *mixedOp) Recover(ctx context.Context) error {
	if o.last < 0 {
		return nil
	}
	if r, ok := o.ops[o.last].(Recoverer); ok {
		return r.Recover(ctx)
	}
	return nil
}
