/* placeholder */ typedef int sbx_placeholder_sandbox_fallback;
