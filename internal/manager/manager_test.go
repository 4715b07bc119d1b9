package manager

import (
	"maps"
	"slices"
	"testing"
)

func TestWatchNamespacesScopesTheCache(t *testing.T) {
	for in, want := range map[string][]string{
		"":                nil,
		" , ":             nil,
		"apps":            {"apps"},
		"apps, billing,,": {"apps", "billing"},
	} {
		got := slices.Sorted(maps.Keys(watched(in)))
		if !slices.Equal(got, want) {
			t.Errorf("watched(%q) = %v, want %v", in, got, want)
		}
		if want == nil && watched(in) != nil {
			t.Errorf("watched(%q) is not nil: the cache would watch no namespace", in)
		}
	}
}
