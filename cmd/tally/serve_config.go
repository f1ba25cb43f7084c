package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tallyauth/tally/node"
)

// The configuration file of "tally serve --config FILE" is a JSON object
// whose keys are the serve flags' names in snake_case (--data-dir is
// "data_dir"), derived from the flag set itself, so every flag is a key and
// no key exists without a flag. Values: a JSON string for string and
// duration flags ("5s"), true/false for boolean flags, a number for integer
// flags, a number or a string for byte sizes ("256MiB"), a string or an
// array of strings for list flags (comma-separated as a flag), and for
// "peers" an array of {"id", "raft_addr", "nonvoter"} objects (or the
// flag's "id=host:port,..." string). null leaves a setting alone. Unknown
// keys, trailing data and type mismatches are errors. Values set here are
// overridden by environment variables and flags.

// notFileKeys are flags that are not settings: they have no file key.
var notFileKeys = map[string]bool{"config": true, "check-config": true}

// fileKey is the configuration file key of a flag.
func fileKey(flagName string) string { return strings.ReplaceAll(flagName, "-", "_") }

// jsonFlag is a flag.Value that also reads a JSON value of the
// configuration file that is not a plain string (peersFlag's objects).
type jsonFlag interface {
	SetJSON(raw json.RawMessage) error
}

type filePeer struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	Nonvoter bool   `json:"nonvoter"`
}

// byteSizeFlag is a flag holding a byte count ("256MiB"; see
// node.ParseByteSize).
type byteSizeFlag struct{ v *uint64 }

func (f byteSizeFlag) String() string {
	if f.v == nil {
		return ""
	}
	return node.FormatByteSize(*f.v)
}

func (f byteSizeFlag) Set(s string) error {
	v, err := node.ParseByteSize(s)
	if err != nil {
		return err
	}
	*f.v = v
	return nil
}

// maxConfigBytes bounds the configuration file.
const maxConfigBytes = 1 << 20

// loadServeFile reads the configuration file at path into cfg and the log
// level, through the serve flag set.
func loadServeFile(path string, cfg *node.Config, logLevel *string) error {
	var checkOnly bool
	return applyServeFile(serveFlagSet(cfg, logLevel, &checkOnly), path, nil)
}

// applyServeFile sets the flags of fs named by the keys of the
// configuration file at path, except those in skip (given on the command
// line, which wins).
func applyServeFile(fs *flag.FlagSet, path string, skip map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return err
	}
	if len(data) > maxConfigBytes {
		return fmt.Errorf("%s is larger than %d bytes", path, maxConfigBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var keys map[string]json.RawMessage
	if err := dec.Decode(&keys); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if keys == nil {
		return fmt.Errorf("%s: want a JSON object", path)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: trailing data after the JSON object", path)
	}
	byKey := map[string]*flag.Flag{}
	fs.VisitAll(func(f *flag.Flag) {
		if !notFileKeys[f.Name] {
			byKey[fileKey(f.Name)] = f
		}
	})
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		f, ok := byKey[key]
		if !ok {
			return fmt.Errorf("%s: unknown key %q", path, key)
		}
		raw := keys[key]
		if skip[f.Name] || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			continue
		}
		if err := setFromJSON(f, raw); err != nil {
			return fmt.Errorf("%s: %q: %w", path, key, err)
		}
	}
	return nil
}

// setFromJSON sets a flag from a configuration file value of the JSON type
// the flag's kind calls for.
func setFromJSON(f *flag.Flag, raw json.RawMessage) error {
	if j, ok := f.Value.(jsonFlag); ok {
		return j.SetJSON(raw)
	}
	var kind any
	if g, ok := f.Value.(flag.Getter); ok {
		kind = g.Get()
	}
	var s string
	switch kind.(type) {
	case bool:
		var b bool
		if err := json.Unmarshal(raw, &b); err != nil {
			return fmt.Errorf("want true or false: %w", err)
		}
		s = strconv.FormatBool(b)
	case int, int64, uint, uint64:
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("want a number: %w", err)
		}
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("want a number, not %s", raw)
		}
		s = n.String()
	case time.Duration:
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf("want a duration string like \"5s\": %w", err)
		}
	case string:
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf("want a string: %w", err)
		}
	default:
		// A flag of its own type (byte size, list): a string, a number or
		// an array of strings, as the flag would take them.
		var list []string
		var n json.Number
		switch {
		case json.Unmarshal(raw, &s) == nil:
		case json.Unmarshal(raw, &n) == nil:
			s = n.String()
		case json.Unmarshal(raw, &list) == nil:
			s = strings.Join(list, ",")
		default:
			return errors.New("want a string, a number or an array of strings")
		}
	}
	return f.Value.Set(s)
}

// peersFlag is --peers "id=host:port,id=host:port".
type peersFlag struct{ peers *[]node.Peer }

func (p peersFlag) String() string {
	if p.peers == nil {
		return ""
	}
	var parts []string
	for _, x := range *p.peers {
		parts = append(parts, x.ID+"="+x.RaftAddr)
	}
	return strings.Join(parts, ",")
}

func (p peersFlag) Set(v string) error {
	var out []node.Peer
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || id == "" || addr == "" {
			return fmt.Errorf("peer %q: want id=host:port", part)
		}
		out = append(out, node.Peer{ID: id, RaftAddr: addr})
	}
	*p.peers = out
	return nil
}

// SetJSON reads the configuration file's "peers": an array of
// {"id", "raft_addr", "nonvoter"} objects, or the flag's string.
func (p peersFlag) SetJSON(raw json.RawMessage) error {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return p.Set(s)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var peers []filePeer
	if err := dec.Decode(&peers); err != nil {
		return fmt.Errorf("want an array of {\"id\", \"raft_addr\", \"nonvoter\"}: %w", err)
	}
	var out []node.Peer
	for _, x := range peers {
		out = append(out, node.Peer(x))
	}
	*p.peers = out
	return nil
}
