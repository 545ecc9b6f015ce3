-- dgemma-ls for Neovim 0.11+ (inline completion needs 0.12).
--
-- Copy this file to ~/.config/nvim/lua/dgemma.lua and call, from init.lua:
--   require('dgemma').setup()                         -- defaults
--   require('dgemma').setup({ settings = { model = '/path/to/checkpoint', steps = 8 } })
--
-- Keys in insert mode: <Tab> accepts the inline completion (or inserts a tab when none
-- is shown), <M-]> / <M-[> cycle candidates, <M-\> asks for one now. `gra` (Neovim's
-- default code-action key) offers "Fill in the middle", "Repair JSON" and "Repair
-- Markdown table".

local M = {}

M.defaults = {
  cmd = { 'dgemma-ls' }, -- or { '/path/to/venv/bin/dgemma-ls', '--log-level', 'INFO' }
  filetypes = {
    'python',
    'javascript',
    'javascriptreact',
    'typescript',
    'typescriptreact',
    'json',
    'jsonc',
    'markdown',
  },
  root_markers = { '.git', 'pyproject.toml', 'package.json' },
  -- The `dgemma` section the server reads (camelCase keys, as in VS Code):
  -- model, device ('cpu' | 'cuda' | 'auto'), dtype ('auto' | 'float32' | 'bfloat16' |
  -- 'float16'), compile (default true: torch.compile the denoising step in the background after
  -- the load, ~25% faster), steps, entropyBound, maxMiddleTokens, enabledLanguages.
  settings = {},
  keymaps = true,
}

local function set_keymaps()
  local inline = vim.lsp.inline_completion
  vim.keymap.set('i', '<Tab>', function()
    if not inline.get() then
      -- Nothing to accept: an ordinary <Tab> (noremap, so this mapping does not recurse).
      vim.api.nvim_feedkeys(vim.keycode('<Tab>'), 'n', false)
    end
  end, { desc = 'dgemma: accept the inline completion' })
  vim.keymap.set('i', '<M-]>', function()
    inline.select({ count = 1 })
  end, { desc = 'dgemma: next inline completion' })
  vim.keymap.set('i', '<M-[>', function()
    inline.select({ count = -1 })
  end, { desc = 'dgemma: previous inline completion' })
end

function M.setup(opts)
  opts = vim.tbl_deep_extend('force', M.defaults, opts or {})
  local section = { dgemma = opts.settings }

  vim.lsp.config('dgemma', {
    cmd = opts.cmd,
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    workspace_required = false,
    init_options = section, -- read once at start-up
    settings = section, -- answers workspace/configuration, sent on didChangeConfiguration
  })
  vim.lsp.enable('dgemma')

  if vim.lsp.inline_completion then
    -- 0.12: ghost text as you type, for every client that offers inline completions.
    vim.lsp.inline_completion.enable(true)
    if opts.keymaps then
      set_keymaps()
    end
  else
    -- 0.11: the server's textDocument/completion fallback in the completion menu.
    vim.api.nvim_create_autocmd('LspAttach', {
      group = vim.api.nvim_create_augroup('dgemma.completion', { clear = true }),
      callback = function(event)
        local client = vim.lsp.get_client_by_id(event.data.client_id)
        if client and client.name == 'dgemma' then
          vim.lsp.completion.enable(true, client.id, event.buf, { autotrigger = true })
        end
      end,
    })
  end
end

--- Change settings of the running server, e.g. require('dgemma').configure({ steps = 4 }).
function M.configure(settings)
  for _, client in ipairs(vim.lsp.get_clients({ name = 'dgemma' })) do
    client.settings = vim.tbl_deep_extend('force', client.settings or {}, { dgemma = settings })
    client:notify('workspace/didChangeConfiguration', { settings = client.settings })
  end
end

return M
