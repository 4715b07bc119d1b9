package agentapi

import (
	"strconv"
	"strings"
)

// SlotName is the physical replication slot the primary keeps for the standby pod:
// "pgop_" and the pod name with '-' replaced by '_' (slot names allow only
// lowercase letters, digits and underscores).
func SlotName(pod string) string {
	return SlotPrefix + strings.ReplaceAll(pod, "-", "_")
}

// SlotPrefix marks the replication slots the operator manages; others are left
// alone.
const SlotPrefix = "pgop_"

// Ordinal returns the StatefulSet ordinal at the end of a pod name, or -1.
func Ordinal(pod string) int {
	i := strings.LastIndex(pod, "-")
	if i < 0 {
		return -1
	}
	n, err := strconv.Atoi(pod[i+1:])
	if err != nil {
		return -1
	}
	return n
}
