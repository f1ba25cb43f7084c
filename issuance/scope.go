package issuance

import (
	"errors"
	"slices"
	"strings"
)

// ErrMalformedScope is returned by ParseScope for a value that does not match
// the RFC 6749 §3.3 scope grammar.
var ErrMalformedScope = errors.New("issuance: malformed scope")

// ValidScopeToken reports whether s is an RFC 6749 §3.3 scope-token:
// one or more of %x21 / %x23-5B / %x5D-7E (printable ASCII except space,
// double quote and backslash).
func ValidScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !scopeChar(s[i]) {
			return false
		}
	}
	return true
}

func scopeChar(c byte) bool {
	return c == 0x21 || (c >= 0x23 && c <= 0x5B) || (c >= 0x5D && c <= 0x7E)
}

// ParseScope parses an RFC 6749 §3.3 scope value:
//
//	scope = scope-token *( SP scope-token )
//
// Tokens are separated by exactly one space, with none leading or trailing.
// Duplicates are dropped, keeping the first occurrence's position. The empty
// string yields no scopes and no error (RFC 6749 §3.1: an empty parameter is
// an omitted one).
func ParseScope(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	n := strings.Count(s, " ") + 1
	out := make([]string, 0, n)
	var seen map[string]struct{}
	if n > 8 {
		// Bound the work on long attacker-supplied values.
		seen = make(map[string]struct{}, n)
	}
	for tok := range strings.SplitSeq(s, " ") {
		if !ValidScopeToken(tok) {
			return nil, ErrMalformedScope
		}
		if seen != nil {
			if _, dup := seen[tok]; dup {
				continue
			}
			seen[tok] = struct{}{}
		} else if slices.Contains(out, tok) {
			continue
		}
		out = append(out, tok)
	}
	return out, nil
}

// joinScope renders scopes as an RFC 6749 §3.3 scope value.
func joinScope(scope []string) string {
	return strings.Join(scope, " ")
}
