-- dgemma-ls for Neovim 0.11+ (ghost text needs 0.12).
--
-- Copy this file to ~/.config/nvim/lua/dgemma.lua and call, from init.lua:
--   require('dgemma').setup()                         -- defaults
--   require('dgemma').setup({ settings = { model = '/path/to/checkpoint', steps = 8 } })
--
-- Keys in insert mode, only in buffers dgemma-ls is attached to: <Tab> accepts the ghost
-- text (or inserts a tab when none is shown), <M-\> asks for several candidates, <M-]> /
-- <M-[> cycle them, <M-Right> accepts the next word, <M-Down> the rest of the line. `gra`
-- (Neovim's default code-action key) offers "Fill in the middle", "Repair JSON" and
-- "Repair Markdown table". The model's loading is echoed; require('dgemma').status() is a
-- statusline component (loading, thinking, the last completion's time).

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
  -- Ghost text (0.12). false: suggestions in the completion menu instead, as on 0.11.
  inline = true,
  -- Echo the model's loading progress (the server's $/progress).
  progress = true,
}

local inline = vim.lsp.inline_completion
local invoked = 1 -- LSP InlineCompletionTriggerKind.Invoked (0.11's vim.lsp.protocol lacks the enum)
local state = { loading = nil, pending = 0, last_ms = nil, started = {} }

--- A statusline component: "dgemma: loading 40%", "dgemma: thinking", "dgemma 85ms" or "".
--- e.g. vim.o.statusline = "%f %= %{v:lua.require'dgemma'.status()} %l:%c"
function M.status()
  if state.loading then
    return 'dgemma: ' .. state.loading
  elseif state.pending > 0 then
    return 'dgemma: thinking'
  elseif state.last_ms then
    return ('dgemma %dms'):format(state.last_ms)
  end
  return ''
end

-- The buffer's inline-completion state. Neovim 0.12 keeps it private (vim.lsp._capability);
-- asking for several candidates (an Invoked request) has no public API yet.
local function completor(buf)
  local ok, capability = pcall(require, 'vim.lsp._capability')
  local all = ok and capability.all and capability.all.inline_completion
  return all and all.active[buf]
end

--- Ask dgemma-ls for several candidates at the cursor (Invoked), show the first, then move
--- `count` candidates on (nil: stay on the first).
local function request_candidates(buf, client, count)
  local current = completor(buf)
  if not current then
    return
  end
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = invoked }
  client:request('textDocument/inlineCompletion', params, function(err, result, ctx)
    -- a reply to an older text or after leaving insert mode is dropped
    if ctx.version ~= vim.lsp.util.buf_versions[buf] or not vim.api.nvim_get_mode().mode:match('^i') then
      return
    end
    current:handler(err, result, ctx)
    if count and current:count_items() > 1 then
      inline.select({ bufnr = buf, count = count })
    end
  end, buf)
end

local function cycle(buf, client, count)
  local current = completor(buf)
  if current and current.current and current:count_items() > 1 then
    inline.select({ bufnr = buf, count = count })
  else -- what is shown came from an automatic request: one candidate
    request_candidates(buf, client, count)
  end
end

--- Accept the ghost text now, before any key typed after the one that accepts it.
--- get() applies the item on the next turn of the event loop, and Neovim reads all pending
--- typeahead before it turns: a Tab and an x arriving together would insert x first. Waiting
--- here for a callback queued behind get()'s makes the accept happen inside this key.
local function accept(opts)
  if not inline.get(opts) then
    return false
  end
  local applied = false
  vim.schedule(function()
    applied = true
  end)
  vim.wait(1000, function()
    return applied
  end, 1)
  return true
end

--- The item's text up to the end of its next word ('word') or of its first line ('line').
local function partial(item, unit)
  local text = type(item.insert_text) == 'string' and item.insert_text or item.insert_text.value
  local cursor = vim.api.nvim_win_get_cursor(0)
  local skip = 0
  if item.range then -- the item may repeat what is typed between range.start and the cursor
    skip = cursor[2] - item.range.start.col
  end
  local rest = text:sub(skip + 1)
  local piece = unit == 'word' and rest:match('^%s*[^%s]+') or rest:match('^[^\n]*\n?')
  return piece or rest
end

local function accept_partial(buf, unit)
  return accept({
    bufnr = buf,
    on_accept = function(item)
      vim.api.nvim_paste(partial(item, unit), false, -1)
    end,
  })
end

local function set_keymaps(buf, client)
  local function map(lhs, rhs, desc)
    vim.keymap.set('i', lhs, rhs, { buffer = buf, desc = 'dgemma: ' .. desc })
  end
  map('<Tab>', function()
    if vim.snippet.active({ direction = 1 }) then -- what Neovim's own <Tab> mapping does
      vim.snippet.jump(1)
    elseif not accept({ bufnr = buf }) then
      -- 'i': ahead of keys already typed after this <Tab>; 'n': not this mapping again
      vim.api.nvim_feedkeys(vim.keycode('<Tab>'), 'ni', false)
    end
  end, 'accept the inline completion')
  map('<M-Right>', function()
    accept_partial(buf, 'word')
  end, 'accept the next word of the inline completion')
  map('<M-Down>', function()
    accept_partial(buf, 'line')
  end, 'accept the rest of the line of the inline completion')
  map('<M-\\>', function()
    request_candidates(buf, client, nil)
  end, 'ask for inline completions')
  map('<M-]>', function()
    cycle(buf, client, 1)
  end, 'next inline completion')
  map('<M-[>', function()
    cycle(buf, client, -1)
  end, 'previous inline completion')
end

local function on_attach(event, opts)
  local client = vim.lsp.get_client_by_id(event.data.client_id)
  if not client or client.name ~= 'dgemma' then
    return
  end
  if inline and opts.inline then
    inline.enable(true, { client_id = client.id })
    if opts.keymaps then
      set_keymaps(event.buf, client)
    end
  else
    -- the server's textDocument/completion in the menu, opened as you type (trigger characters);
    -- a single suggestion shows too, and nothing is inserted until it is chosen
    -- ('completeopt' is buffer-local only since Vim 9.1.0469; an older Neovim keeps its global value)
    pcall(function()
      vim.bo[event.buf].completeopt = 'menu,menuone,noinsert,popup'
    end)
    vim.lsp.completion.enable(true, client.id, event.buf, { autotrigger = true })
  end
end

local function on_progress(event)
  local client = vim.lsp.get_client_by_id(event.data.client_id)
  local value = event.data.params.value
  if not client or client.name ~= 'dgemma' or type(value) ~= 'table' then
    return
  end
  if value.kind == 'end' then
    state.loading = nil
  else
    local title = value.title or state.title or 'loading'
    state.title = title
    state.loading = value.percentage and ('%s %d%%'):format(title:gsub('^dgemma: ', ''), value.percentage)
      or title:gsub('^dgemma: ', '')
  end
  vim.api.nvim_echo({ { value.kind == 'end' and ('dgemma: ' .. (value.message or 'ready')) or M.status() } }, false, {})
  vim.cmd.redrawstatus()
end

local function on_request(event)
  local client = vim.lsp.get_client_by_id(event.data.client_id)
  local request = event.data.request
  if not client or client.name ~= 'dgemma' or request.method ~= 'textDocument/inlineCompletion' then
    return
  end
  local id = event.data.request_id
  if request.type == 'pending' then
    state.started[id] = vim.uv.hrtime()
  elseif state.started[id] then
    if request.type == 'complete' then
      state.last_ms = (vim.uv.hrtime() - state.started[id]) / 1e6
    end
    state.started[id] = nil
  end
  state.pending = vim.tbl_count(state.started)
  vim.cmd.redrawstatus()
end

function M.setup(opts)
  opts = vim.tbl_deep_extend('force', M.defaults, opts or {})
  local section = { dgemma = opts.settings }
  local capabilities = nil
  if not (inline and opts.inline) then
    -- The server offers its completion-menu fallback only to clients without inline completion:
    -- send `inlineCompletion: null` (a nil would leave Neovim's default in the merge).
    capabilities = { textDocument = { inlineCompletion = vim.NIL } }
  end

  vim.lsp.config('dgemma', {
    cmd = opts.cmd,
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    workspace_required = false,
    capabilities = capabilities,
    init_options = section, -- read once at start-up
    settings = section, -- answers workspace/configuration, sent on didChangeConfiguration
  })
  vim.lsp.enable('dgemma')

  local group = vim.api.nvim_create_augroup('dgemma', { clear = true })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(event)
      on_attach(event, opts)
    end,
  })
  vim.api.nvim_create_autocmd('LspRequest', { group = group, callback = on_request })
  if opts.progress then
    vim.api.nvim_create_autocmd('LspProgress', { group = group, callback = on_progress })
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
