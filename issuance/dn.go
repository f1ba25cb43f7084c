package issuance

import (
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"unicode/utf8"
)

// Distinguished name matching for tls_client_auth_subject_dn (RFC 8705
// §2.1.2: "the expected subject distinguished name of the certificate, as
// defined in RFC 4514").
//
// The registered string is parsed per RFC 4514 (RDNs most specific first,
// separated by ',' — ';' accepted as RFC 1779 did — multi-valued RDNs
// joined by '+', attribute types by short name, by "OID."-prefixed or bare
// dotted OID, values with '\' escapes of special characters or hex pairs
// (UTF-8 bytes), "#" hex BER encodings, or RFC 1779 quotes). The
// certificate's subject is read from its DER (RawSubject), keeping the
// order and grouping of its RDNs. Two names match when they have the same
// RDNs in the same order, each the same set of attribute type and value
// pairs; string values compare after RFC 4518's insignificant-space
// handling (trimmed, inner runs of spaces as one) and without case
// (caseIgnoreMatch, the equality rule of the naming attributes X.509
// subjects use); other values compare by their BER encoding.

// dnAttr is one attribute type and value, normalized.
type dnAttr struct {
	oid string
	// val is the normalized string ("s:" prefix) or the hex of the BER
	// encoding of a non-string value ("b:" prefix).
	val string
}

// dnAttrNames are the attribute type names RFC 4514 §3 lists, and the
// usual others (RFC 4519, PKCS #9 emailAddress).
var dnAttrNames = map[string]string{
	"CN": "2.5.4.3", "SN": "2.5.4.4", "SERIALNUMBER": "2.5.4.5", "C": "2.5.4.6", "L": "2.5.4.7",
	"ST": "2.5.4.8", "S": "2.5.4.8", "STREET": "2.5.4.9", "O": "2.5.4.10", "OU": "2.5.4.11",
	"T": "2.5.4.12", "TITLE": "2.5.4.12", "POSTALCODE": "2.5.4.17", "GN": "2.5.4.42", "GIVENNAME": "2.5.4.42",
	"INITIALS": "2.5.4.43", "DNQUALIFIER": "2.5.4.46", "PSEUDONYM": "2.5.4.65", "ORGANIZATIONIDENTIFIER": "2.5.4.97",
	"DC": "0.9.2342.19200300.100.1.25", "UID": "0.9.2342.19200300.100.1.1",
	"EMAILADDRESS": "1.2.840.113549.1.9.1", "E": "1.2.840.113549.1.9.1",
}

// maxDNLen bounds a registered DN.
const maxDNLen = 4096

// ValidateDN checks that s is an RFC 4514 distinguished name tls_client_auth
// can match; the error says what is wrong (for the admin API).
func ValidateDN(s string) error {
	_, err := parseDN(s)
	return err
}

// parseDN parses an RFC 4514 distinguished name. The result is in RFC 4514
// order (most specific RDN first), each RDN's attributes sorted.
func parseDN(s string) ([][]dnAttr, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("empty distinguished name")
	}
	if len(s) > maxDNLen {
		return nil, errors.New("distinguished name too long")
	}
	var rdns [][]dnAttr
	var rdn []dnAttr
	i := 0
	for {
		a, next, sep, err := parseAVA(s, i)
		if err != nil {
			return nil, err
		}
		rdn = append(rdn, a)
		i = next
		if sep != '+' {
			slices.SortFunc(rdn, cmpAttr)
			rdns = append(rdns, rdn)
			rdn = nil
		}
		if sep == 0 {
			return rdns, nil
		}
	}
}

func cmpAttr(a, b dnAttr) int {
	if c := strings.Compare(a.oid, b.oid); c != 0 {
		return c
	}
	return strings.Compare(a.val, b.val)
}

// parseAVA parses "type=value" at s[i:]; it returns the index after the
// separator that ended it and the separator (',' — also for ';' —, '+', or
// 0 at the end).
func parseAVA(s string, i int) (dnAttr, int, byte, error) {
	eq := strings.IndexByte(s[i:], '=')
	if eq < 0 {
		return dnAttr{}, 0, 0, errors.New("attribute without '='")
	}
	typ := strings.TrimSpace(s[i : i+eq])
	oid, err := dnAttrOID(typ)
	if err != nil {
		return dnAttr{}, 0, 0, err
	}
	i += eq + 1
	for i < len(s) && s[i] == ' ' {
		i++
	}
	var val string
	switch {
	case i < len(s) && s[i] == '#':
		j := i + 1
		for j < len(s) && isHex(s[j]) {
			j++
		}
		ber, err := hex.DecodeString(s[i+1 : j])
		if err != nil || len(ber) == 0 {
			return dnAttr{}, 0, 0, errors.New("bad #hex value of " + typ)
		}
		if val, err = berValue(ber); err != nil {
			return dnAttr{}, 0, 0, errors.New("bad #hex value of " + typ)
		}
		i = j
	case i < len(s) && s[i] == '"':
		j := strings.IndexByte(s[i+1:], '"')
		if j < 0 {
			return dnAttr{}, 0, 0, errors.New("unterminated quoted value of " + typ)
		}
		val = "s:" + foldValue(s[i+1:i+1+j])
		i += j + 2
	default:
		var b []byte
		for i < len(s) && s[i] != ',' && s[i] != ';' && s[i] != '+' {
			if s[i] != '\\' {
				b = append(b, s[i])
				i++
				continue
			}
			switch {
			case i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
				v, _ := hex.DecodeString(s[i+1 : i+3])
				b = append(b, v[0])
				i += 3
			case i+1 < len(s) && strings.IndexByte(` "#+,;<>=\`, s[i+1]) >= 0:
				b = append(b, s[i+1])
				i += 2
			default:
				return dnAttr{}, 0, 0, errors.New("bad escape in the value of " + typ)
			}
		}
		if !utf8.Valid(b) {
			return dnAttr{}, 0, 0, errors.New("value of " + typ + " is not UTF-8")
		}
		val = "s:" + foldValue(string(b))
	}
	for i < len(s) && s[i] == ' ' {
		i++
	}
	if i == len(s) {
		return dnAttr{oid: oid, val: val}, i, 0, nil
	}
	switch s[i] {
	case ',', ';':
		return dnAttr{oid: oid, val: val}, i + 1, ',', nil
	case '+':
		return dnAttr{oid: oid, val: val}, i + 1, '+', nil
	}
	return dnAttr{}, 0, 0, errors.New("unexpected text after the value of " + typ)
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// dnAttrOID resolves an attribute type: a short name, "OID.1.2.3" or a
// dotted OID.
func dnAttrOID(typ string) (string, error) {
	if typ == "" {
		return "", errors.New("empty attribute type")
	}
	if oid, ok := dnAttrNames[strings.ToUpper(typ)]; ok {
		return oid, nil
	}
	t := typ
	if len(t) > 4 && strings.EqualFold(t[:4], "OID.") {
		t = t[4:]
	}
	parts := strings.Split(t, ".")
	if len(parts) < 2 {
		return "", errors.New("unknown attribute type " + typ)
	}
	for _, p := range parts {
		if p == "" || len(p) > 9 || strings.Trim(p, "0123456789") != "" || (len(p) > 1 && p[0] == '0') {
			return "", errors.New("unknown attribute type " + typ)
		}
	}
	return t, nil
}

// foldValue is RFC 4518 insignificant space handling and case folding.
func foldValue(v string) string {
	return strings.ToLower(strings.Join(strings.Fields(v), " "))
}

// berValue normalizes a BER-encoded attribute value: a string type as its
// folded string, anything else as its hex.
func berValue(ber []byte) (string, error) {
	var rv asn1.RawValue
	rest, err := asn1.Unmarshal(ber, &rv)
	if err != nil || len(rest) > 0 {
		return "", errors.New("bad BER value")
	}
	return attrValue(rv), nil
}

// attrValue normalizes one attribute value of a certificate or a #hex
// registration.
func attrValue(rv asn1.RawValue) string {
	if rv.Class == asn1.ClassUniversal {
		switch rv.Tag {
		case asn1.TagUTF8String, asn1.TagPrintableString, asn1.TagIA5String, asn1.TagT61String, asn1.TagNumericString:
			if utf8.Valid(rv.Bytes) {
				return "s:" + foldValue(string(rv.Bytes))
			}
		case asn1.TagBMPString:
			if len(rv.Bytes)%2 == 0 {
				var r []rune
				for i := 0; i < len(rv.Bytes); i += 2 {
					r = append(r, rune(rv.Bytes[i])<<8|rune(rv.Bytes[i+1]))
				}
				return "s:" + foldValue(string(r))
			}
		}
	}
	return "b:" + hex.EncodeToString(rv.FullBytes)
}

// rawATV and rawRDNSET read a Name keeping each value's encoding.
type rawATV struct {
	Type  asn1.ObjectIdentifier
	Value asn1.RawValue
}

type rawRDNSET []rawATV

// subjectDN is a certificate subject (its DER) in RFC 4514 order,
// normalized like parseDN's result.
func subjectDN(raw []byte) ([][]dnAttr, error) {
	var seq []rawRDNSET
	rest, err := asn1.Unmarshal(raw, &seq)
	if err != nil || len(rest) > 0 {
		return nil, errors.New("bad certificate subject")
	}
	out := make([][]dnAttr, 0, len(seq))
	for i := len(seq) - 1; i >= 0; i-- {
		rdn := make([]dnAttr, 0, len(seq[i]))
		for _, a := range seq[i] {
			rdn = append(rdn, dnAttr{oid: a.Type.String(), val: attrValue(a.Value)})
		}
		slices.SortFunc(rdn, cmpAttr)
		out = append(out, rdn)
	}
	return out, nil
}

// subjectMatches reports whether the certificate subject (DER) is the
// registered RFC 4514 DN.
func subjectMatches(rawSubject []byte, registered string) bool {
	want, err := parseDN(registered)
	if err != nil {
		return false
	}
	got, err := subjectDN(rawSubject)
	if err != nil || len(got) == 0 {
		return false
	}
	return slices.EqualFunc(got, want, func(a, b []dnAttr) bool { return slices.Equal(a, b) })
}
