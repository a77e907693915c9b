/* The mount's root (fs/root.c): workspace/ and the control trees. */
#ifndef SBX_FS_ROOT_H
#define SBX_FS_ROOT_H

struct ctl_entry;

/* NODE_ROOT's handlers. */
extern const struct kind_ops root_kind_ops;
/* The control trees at the root, NULL-terminated, in the order a listing shows them after
 * workspace/: ctx/, proc/, ports/, git/, env, sessions/, watch. */
extern const struct ctl_entry *const root_trees[];
#endif
