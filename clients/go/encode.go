package cached

import (
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// appendIdentity appends the JSON form of an identity: integers of any Go integer type, *big.Int
// (or big.Int), json.Number holding an integer, or a string. Anything else is refused with a
// CodeInvalidParams *Error before anything is sent.
func appendIdentity(buf []byte, name string, identity any) ([]byte, error) {
	switch v := identity.(type) {
	case int:
		return strconv.AppendInt(buf, int64(v), 10), nil
	case int8:
		return strconv.AppendInt(buf, int64(v), 10), nil
	case int16:
		return strconv.AppendInt(buf, int64(v), 10), nil
	case int32:
		return strconv.AppendInt(buf, int64(v), 10), nil
	case int64:
		return strconv.AppendInt(buf, v, 10), nil
	case uint:
		return strconv.AppendUint(buf, uint64(v), 10), nil
	case uint8:
		return strconv.AppendUint(buf, uint64(v), 10), nil
	case uint16:
		return strconv.AppendUint(buf, uint64(v), 10), nil
	case uint32:
		return strconv.AppendUint(buf, uint64(v), 10), nil
	case uint64:
		return strconv.AppendUint(buf, v, 10), nil
	case uintptr:
		return strconv.AppendUint(buf, uint64(v), 10), nil
	case *big.Int:
		if v == nil {
			return buf, invalidParams("%s is a nil *big.Int", name)
		}
		return v.Append(buf, 10), nil
	case big.Int:
		return v.Append(buf, 10), nil
	case json.Number:
		n, ok := new(big.Int).SetString(string(v), 10)
		if !ok {
			return buf, invalidParams("%s %q is not an integer", name, string(v))
		}
		return n.Append(buf, 10), nil
	case string:
		if !utf8.ValidString(v) {
			return buf, invalidParams("%s is not valid UTF-8", name)
		}
		return appendString(buf, v), nil
	case nil:
		return buf, invalidParams("%s is nil: it must be an integer or a string", name)
	default:
		return buf, invalidParams("%s of type %T is neither an integer nor a string", name, identity)
	}
}

// identityKey is the identity's part of a near-cache address: "n" and the canonical decimal of an
// integer, "s" and the text of a string.
func identityKey(identity any) string {
	switch v := identity.(type) {
	case string:
		return "s" + v
	case json.Number:
		if n, ok := new(big.Int).SetString(string(v), 10); ok {
			return "n" + n.String()
		}
	}
	b, err := appendIdentity(nil, "identity", identity)
	if err != nil {
		return ""
	}
	return "n" + string(b)
}

// rawIdentityKey is identityKey for an identity as JSON text (from a notification).
func rawIdentityKey(raw json.RawMessage) string {
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return "s" + s
		}
		return ""
	}
	if n, ok := new(big.Int).SetString(strings.TrimSpace(string(raw)), 10); ok {
		return "n" + n.String()
	}
	return "?" + string(raw)
}

// address names an entry for the near cache (and the in-process fetch flights): names upper-cased,
// as the daemon compares them.
func address(key string, identity string, hashKey string, hashID string) string {
	return strings.ToUpper(key) + "\x00" + identity + "\x00" + strings.ToUpper(hashKey) + "\x00" + hashID
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string: quotes, backslashes and control characters escaped,
// everything else (valid UTF-8) as it is.
func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		buf = append(buf, s[start:i]...)
		switch c {
		case '"', '\\':
			buf = append(buf, '\\', c)
		case '\n':
			buf = append(buf, '\\', 'n')
		case '\r':
			buf = append(buf, '\\', 'r')
		case '\t':
			buf = append(buf, '\\', 't')
		default:
			buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

// appendValue appends `"value":...`: the bytes as a JSON string when they are valid UTF-8, else
// base64 with `"encoding":"base64"`.
func appendValue(buf []byte, value []byte) []byte {
	if utf8.Valid(value) {
		buf = append(buf, `,"value":`...)
		return appendString(buf, string(value))
	}
	buf = append(buf, `,"value":"`...)
	n := base64.StdEncoding.EncodedLen(len(value))
	start := len(buf)
	for cap(buf)-len(buf) < n {
		buf = append(buf[:cap(buf)], 0)[:len(buf)]
	}
	buf = buf[:start+n]
	base64.StdEncoding.Encode(buf[start:], value)
	return append(buf, `","encoding":"base64"`...)
}

// appendSeconds appends d as fractional seconds (microsecond precision).
func appendSeconds(buf []byte, d time.Duration) []byte {
	return strconv.AppendFloat(buf, d.Seconds(), 'f', -1, 64)
}

// timeoutSeconds bounds a request's timeout to what the daemon accepts: (0, 86400].
func timeoutSeconds(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return time.Millisecond
	}
	if d > 24*time.Hour {
		return 24 * time.Hour
	}
	return d.Truncate(time.Microsecond)
}

func validName(name, what string) error {
	if !utf8.ValidString(name) {
		return invalidParams("%s is not valid UTF-8", what)
	}
	return nil
}
