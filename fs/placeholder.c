int sbx_fs_placeholder(void); int sbx_fs_placeholder(void) { return 0; }
